"""A compile worker: real Triton compiles for GPU targets, in a process of its own.

Run as a script (``python .../fusionlab/inspect/_worker.py``), never imported by fusionlab:
a process that used the Triton interpreter cannot compile for a GPU target, and
``import fusionlab`` switches the interpreter on where there is no GPU. So this file
imports only the standard library, triton and (to warm it) torch, and removes
``TRITON_INTERPRET`` from its environment before triton is imported.

One piece: a script that may import nothing of fusionlab has to hold all it runs (the
protocol loop, the compile, the ptxas/nvdisasm/cuobjdump calls and their parsing).

Protocol (one JSON object per line):

* the worker writes ``{"event": "ready", ...}`` once triton (and torch) are imported;
* the parent writes a task ``{"id", "name", "source", "signature", "constexprs",
  "num_warps", "arch", "options", "env", "hide_tools"}``; the worker answers with one
  result line ``{"id", "ok", "error", "stages", "cubin_b64", "log", "res_usage",
  "metadata", "notes", "compile_seconds", "triton_version"}``;
* ``{"op": "exit"}`` or end of input stops the worker.

The worker's own stdout file descriptor is kept for the protocol; fd 1 is pointed at
stderr, so prints from triton or from child processes cannot corrupt the channel.
"""

import os
import sys

# Running as a script puts this directory first on sys.path, where ``inspect.py`` would
# shadow the standard library's ``inspect`` (which triton uses). Take it out.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
os.environ.pop("TRITON_INTERPRET", None)
os.environ["FUSIONLAB_INTERPRET"] = "0"

import base64  # noqa: E402
import contextlib  # noqa: E402
import faulthandler  # noqa: E402
import json  # noqa: E402
import linecache  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import types  # noqa: E402

# Environment variables the worker owns (the per-task TRITON_* snapshot never overrides them).
OWNED_ENV = (
    "TRITON_CACHE_DIR",
    "TRITON_ALWAYS_COMPILE",
    "TRITON_DUMP_PTXAS_LOG",
    "TRITON_INTERPRET",
)
STAGES = ("ttir", "ttgir", "llir", "ptx")


def _send(chan, obj) -> None:
    chan.write(json.dumps(obj) + "\n")
    chan.flush()


def _watch_parent(parent_pid: int) -> None:
    """Exit when the parent goes away (a worker stuck in a kernel module must not linger)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(3)


@contextlib.contextmanager
def _capture_fds(path: str):
    """Send fds 1 and 2 (Python prints, MLIR diagnostics, ptxas -v) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def _apply_env(env: dict) -> None:
    """Make this worker's TRITON_* variables those of the parent at call time."""
    for k in list(os.environ):
        if k.startswith("TRITON_") and k not in OWNED_ENV and k not in env:
            del os.environ[k]
    for k, v in env.items():
        if k not in OWNED_ENV:
            os.environ[k] = v


# -- the NVIDIA binaries --------------------------------------------------------------


def _tool_descriptor(name: str):
    from triton import knobs

    attr = name.replace("-", "_")
    return type(knobs.nvidia).__dict__.get(attr)


@contextlib.contextmanager
def _hidden_tools(names):
    """Testing aid: pretend the wheel's copies of these binaries are missing."""
    saved = []
    for name in names:
        d = _tool_descriptor(name)
        if d is not None and hasattr(d, "default_path"):
            saved.append((d, d.default_path))
            d.default_path = os.path.join("/nonexistent-fusionlab", name)
            os.environ.pop(d.key, None)
    try:
        yield
    finally:
        for d, p in saved:
            d.default_path = p


def _tool_path(name: str):
    """Path of a usable NVIDIA binary (env override, else the triton wheel's), or None."""
    from triton import knobs

    try:
        return getattr(knobs.nvidia, name.replace("-", "_")).path
    except (RuntimeError, AttributeError):
        return None


def _ptxas_name(arch: int) -> str:
    # Triton 3.9 runs `ptxas-blackwell` (a newer CUDA) for sm_90 and up, `ptxas` below.
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except ImportError:
        return "ptxas"
    return (
        "ptxas" if arch < 90 or _tool_descriptor("ptxas-blackwell") is None else "ptxas-blackwell"
    )


def _missing_ptxas_message(arch: int) -> str:
    name = _ptxas_name(arch)
    var = "TRITON_" + name.upper().replace("-", "_") + "_PATH"
    msg = (
        f"ptxas not found: triton {_triton_version()} compiles sm_{arch} with `{name}`, and neither "
        f"${var} nor the triton wheel's copy (triton/backends/nvidia/bin/{name}) runs. "
        f"Set {var} to a CUDA toolkit's ptxas"
    )
    if name != "ptxas":
        msg += " (for sm_90 and newer Triton 3.9 reads TRITON_PTXAS_BLACKWELL_PATH, not TRITON_PTXAS_PATH)"
    return msg + "."


def _triton_version() -> str:
    # not fusionlab._env.triton_version: this script never imports fusionlab (see above)
    import triton

    return triton.__version__


def _run_tool(args, timeout=60):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(
            f"{os.path.basename(args[0])} exited {r.returncode}: {r.stderr.strip()[:500]}"
        )
    return r.stdout


# -- one compile --------------------------------------------------------------------


def _jit_function(mod, name):
    fn = getattr(mod, name, None)
    if fn is None:
        raise LookupError(f"the kernel module defines no {name!r}")
    seen = 0
    while not hasattr(fn, "arg_names") and hasattr(fn, "fn") and seen < 8:  # autotuner / heuristics
        fn, seen = fn.fn, seen + 1
    if not hasattr(fn, "arg_names"):
        raise TypeError(f"{name!r} is not a @triton.jit function (got {type(fn).__name__})")
    return fn


def compile_task(task: dict, workdir: str) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name = task["name"]
    arch = int(task["arch"])
    out = {
        "ok": False,
        "error": None,
        "stages": {},
        "cubin_b64": None,
        "log": "",
        "res_usage": "",
        "metadata": {},
        "notes": [],
        "compile_seconds": 0.0,
        "timings": {},
        "triton_version": triton.__version__,
    }
    t_task = time.perf_counter()
    _apply_env(task.get("env") or {})
    tdir = tempfile.mkdtemp(prefix="task-", dir=workdir)
    shown = f"{name}.py"

    def clean(text: str) -> str:
        return text.replace(tdir + os.sep, "")

    try:
        with _hidden_tools(task.get("hide_tools") or ()):
            if _tool_path(_ptxas_name(arch)) is None:
                out["error"] = _missing_ptxas_message(arch)
                return out
            # Compile the module text under the plain name "<kernel>.py" (its lines registered
            # with linecache, where triton's inspect.getsourcelines finds them): locations in
            # every stage then read "<kernel>.py":line, the same in every run and worker.
            text = task["source"]
            linecache.cache[shown] = (len(text), None, text.splitlines(True), shown)
            modname = f"_fusionlab_kernel_{task['id']}"
            mod = types.ModuleType(modname)
            mod.__file__ = shown
            sys.modules[modname] = mod
            try:
                t_import = time.perf_counter()
                exec(compile(text, shown, "exec"), mod.__dict__)
                out["timings"]["import"] = time.perf_counter() - t_import
            except BaseException as e:  # noqa: BLE001 - any failure belongs in the report
                tb = "".join(traceback.format_exception_only(type(e), e)).strip()
                out["error"] = clean(f"importing the kernel module failed: {tb}")
                return out
            finally:
                sys.modules.pop(modname, None)
            try:
                fn = _jit_function(mod, name)
            except (LookupError, TypeError) as e:
                out["error"] = str(e)
                return out
            sig = dict(task["signature"])
            consts = dict(task["constexprs"])
            missing = [a for a in fn.arg_names if a not in sig and a not in consts]
            if missing:
                out["error"] = (
                    f"kernel parameters {missing} of {name!r} are in neither KernelSource.signature "
                    "nor KernelSource.constexprs"
                )
                return out
            # specialize as Triton's JIT does for a launch with 16-byte-aligned tensors: an
            # integer argument equal to 1 becomes a constant, pointers and integers divisible
            # by 16 carry tt.divisibility (so loads vectorize as they would on the GPU)
            ints = {a: int(v) for a, v in (task.get("int_args") or {}).items() if a in sig}
            consts.update({a: 1 for a, v in ints.items() if v == 1})
            full = {
                a: ("constexpr" if a in consts else sig[a])
                for a in fn.arg_names
                if a in sig or a in consts
            }
            attrs = {
                (i,): [["tt.divisibility", 16]]
                for i, a in enumerate(fn.arg_names)
                if a not in consts and a in sig
                and (sig[a].startswith("*") or (a in ints and ints[a] % 16 == 0))
            }
            src = ASTSource(fn, signature=full, constexprs=consts, attrs=attrs)
            options = {"num_warps": int(task["num_warps"]), **(task.get("options") or {})}
            log_path = os.path.join(tdir, "compile.log")
            t0 = time.perf_counter()
            try:
                with _capture_fds(log_path):
                    compiled = triton.compile(
                        src, target=GPUTarget("cuda", arch, 32), options=options
                    )
            except BaseException as e:  # noqa: BLE001
                out["compile_seconds"] = time.perf_counter() - t0
                with open(log_path, errors="replace") as f:
                    log = f.read()
                msg = f"{type(e).__name__}: {e}".strip()
                diag = [ln for ln in log.splitlines() if "error" in ln.lower()]
                if diag and not any(d.strip() in msg for d in diag[:3]):
                    msg += "\ncompiler diagnostics:\n" + "\n".join(diag[:20])
                out["error"] = clean(msg)
                out["log"] = clean(log[-20000:])
                return out
            out["compile_seconds"] = time.perf_counter() - t0
            with open(log_path, errors="replace") as f:
                out["log"] = clean(f.read()[-20000:])

            asm = compiled.asm
            for stage in STAGES:
                if stage in asm:
                    out["stages"][stage] = clean(asm[stage])
            cubin = asm.get("cubin")
            md = compiled.metadata
            out["metadata"] = {
                k: getattr(md, k)
                for k in (
                    "name",
                    "shared",
                    "num_warps",
                    "num_stages",
                    "num_ctas",
                    "maxnreg",
                    "enable_fp_fusion",
                    "ptx_version",
                    "tmem_size",
                    "global_scratch_size",
                )
                if hasattr(md, k)
                and isinstance(getattr(md, k), (int, float, str, bool, type(None)))
            }
            out["timings"]["compile"] = out["compile_seconds"]
            if cubin is not None:
                out["cubin_b64"] = base64.b64encode(cubin).decode("ascii")
                t_dis = time.perf_counter()
                _disassemble(cubin, tdir, out, clean)
                out["timings"]["disassemble"] = time.perf_counter() - t_dis
            out["ok"] = True
            return out
    finally:
        shutil.rmtree(tdir, ignore_errors=True)
        out["timings"]["total"] = time.perf_counter() - t_task


def _disassemble(cubin: bytes, tdir: str, out: dict, clean) -> None:
    cpath = os.path.join(tdir, "kernel.cubin")
    with open(cpath, "wb") as f:
        f.write(cubin)
    nvdisasm, cuobjdump = _tool_path("nvdisasm"), _tool_path("cuobjdump")
    sass = None
    if nvdisasm is not None:
        try:  # -c: code only; -g: annotate with the Python source lines (ptxas got -lineinfo)
            sass = _run_tool([nvdisasm, "-c", "-g", cpath])
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            out["notes"].append(f"nvdisasm failed: {e}")
    if sass is None and cuobjdump is not None:
        try:
            sass = _run_tool([cuobjdump, "-sass", cpath])
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            out["notes"].append(f"cuobjdump -sass failed: {e}")
    if sass is not None:
        out["stages"]["sass"] = clean(sass)
    elif nvdisasm is None and cuobjdump is None:
        out["notes"].append(
            "SASS unavailable: nvdisasm and cuobjdump not found (neither TRITON_NVDISASM_PATH / "
            "TRITON_CUOBJDUMP_PATH nor the triton wheel's triton/backends/nvidia/bin copies run)"
        )
    if cuobjdump is not None:
        try:
            out["res_usage"] = _run_tool([cuobjdump, "-res-usage", cpath])
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            out["notes"].append(f"cuobjdump -res-usage failed: {e}")
    else:
        out["notes"].append(
            "cuobjdump not found: resource usage comes from the ptxas log only (set TRITON_CUOBJDUMP_PATH)"
        )


def main() -> int:
    chan = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # stray prints go to stderr, never into the protocol channel
    faulthandler.enable()  # a crash leaves a Python traceback in the worker's stderr
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    workdir = tempfile.mkdtemp(prefix="fusionlab-worker-")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(workdir, "triton-cache")  # private: no stale hits
    # Always run ptxas (its -v log gives registers and spills) and print that log.
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    t0 = time.perf_counter()
    try:
        import triton

        try:  # kernel modules import torch; pay for it once, at start-up
            import torch  # noqa: F401
        except ImportError:
            pass
        _send(
            chan,
            {
                "event": "ready",
                "pid": os.getpid(),
                "triton_version": triton.__version__,
                "startup_seconds": time.perf_counter() - t0,
                "workdir": workdir,
            },
        )
        stdin = sys.stdin.buffer
        while True:
            line = stdin.readline()
            if not line:
                break
            if not line.strip():
                continue
            task = json.loads(line)
            if task.get("op") == "exit":
                break
            try:
                result = compile_task(task, workdir)
            except BaseException as e:  # noqa: BLE001
                result = {
                    "ok": False,
                    "error": f"worker error: {type(e).__name__}: {e}\n{traceback.format_exc()}",
                }
            result["id"] = task.get("id")
            _send(chan, result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
