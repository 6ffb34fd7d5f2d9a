"""One C++ build for the kernels of one compile: the one place the executors touch how Inductor
builds its CPU code.

Inductor builds every C++ function of a compile as its own shared library: one ``g++`` run per
function, and most of each run is spent on the headers every function includes (measured on
this 2-core CPU: 12 functions of the GPT-2 block, 37 s built one by one, 3.6 s as one file).
Inside :func:`batched_builds` the functions a compile asks for are collected instead, and
built together on the first call of any of them, as one library (two, built side by side, when
Inductor may use two compile workers and there are enough functions), with Inductor's Python
binding for each. Compiles that run nothing in between (every candidate's group, compiled
before any is timed) share one build; a compile whose module runs at once builds its own.

Each function is still found by its own source: a function already built in an earlier compile
(the same group checked in a bundle, then run in the whole graph; a toggle that changes one
group) is loaded from the library that holds it, in this process or a later one (a small index
beside Inductor's cache, one file per function: which library, which symbol), and never built
again. What is built is Inductor's generated code, byte for byte, with Inductor's flags, vector
ISA and precompiled header; only the packaging differs. A library that fails to build (never
expected) is built again the way Inductor does it, one function at a time, so a bad batch can
cost time but never correctness. ``FUSIONLAB_BATCH_BUILDS=0`` turns batching off (Inductor's
own one library per function), for comparison.

Every library fusionlab builds is linked by GNU gold where the machine has it (:func:`link_flags`):
a library links against libtorch, and the default linker spends most of a second on its
symbol tables (measured here: 0.53-0.67 s a link with ld.bfd, 0.20 s with gold, of a build of
about 1.8 s). The same objects and libraries, only another linker; a build that fails with it
is built again with the default one, and gold is not used again in that process.

Beside it, :func:`prefetch_cache_keys`: the source hashes a process's first compile waits for,
started in torch's background thread as soon as an executor is made.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import sys
import threading

import torch

PREFIX_INCLUDE = "#include <torch/csrc/inductor/cpp_prefix.h>"  # first in every CPU function (precompiled)
PROFILE_INCLUDE = "#include <torch/csrc/inductor/aoti_runtime/utils.h>"  # with cpp.enable_kernel_profile
# where Inductor's binding template (CppPythonBindingsCodeCache.suffix_template) is cut
_ENTRY_MARK = "static PyObject* {entry_func}_py"
_METHODS_MARK = "static PyMethodDef py_methods[]"
_ENTRY = "kernel"  # the C++ function every source defines (CppPythonBindingsCodeCache.entry_function)
_MIN_PER_LIBRARY = 4  # a second library (a second compile worker) only for at least this many functions
_lock = threading.RLock()
_loaded: dict[str, object] = {}  # function key -> its Python binding, this process
_counts = {"built": 0, "libraries": 0, "found": 0}  # this process: functions built, libraries, found built


def counts() -> dict[str, int]:
    """This process so far: C++ functions built, the libraries they were built in, and the
    functions a compile asked for that were found built (in a library of an earlier compile)."""
    with _lock:
        return dict(_counts)


def prefetch_cache_keys() -> None:
    """Start computing, in torch's background thread, the two source hashes every process's
    first FX graph cache lookup waits for (``torch_key``: Inductor's own sources;
    ``triton_key``: Triton's, its 500 MB library included: about a second here), so they
    overlap the tracing that comes before the first compile. Inductor's own hook
    (``prefetchable_cache.prefetch``); a torch without it computes them when first needed."""
    from torch._inductor import codecache

    for key in (getattr(codecache, "torch_key", None), getattr(codecache, "triton_key", None)):
        prefetch = getattr(key, "prefetch", None)
        if prefetch is not None:
            prefetch()
    _prefetch_vec_isa()


@functools.lru_cache(maxsize=1)
def _prefetch_vec_isa() -> None:
    """Two things the first C++ build of a process waits for, started here in a thread, so that
    they overlap the tracing and the cache lookups instead (a warm start builds nothing, so the
    first toggle after it would wait for both):

    - Inductor's pick of the CPU's vector ISA (``pick_vec_isa``, kept for the process): it
      builds and runs a probe per ISA, about a second;
    - the check of the precompiled header fusionlab's libraries include (Inductor's
      ``_precompile_header``, kept for the process per command line): it preprocesses the
      header and hashes the result, 0.4 s here, to find the header built for exactly these
      headers and flags (and builds it, once a machine, where there is none)."""
    threading.Thread(target=_vec_isa_and_header, name="fusionlab-vec-isa", daemon=True).start()


_HEADER_PROBE = "// at::vec:: (the vector ISA's flags, as every kernel gets them)\nvoid fusionlab_probe() {}\n"


def _vec_isa_and_header() -> None:
    try:
        from torch._inductor.codecache import CppPythonBindingsCodeCache as C
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        pick_vec_isa()
        # the command line of a library of fusionlab's, so Inductor's check for it is the one done
        # here; nothing is built (the probe's library is built only if loaded, and never is)
        C.load_async(_HEADER_PROBE, "cpu", extra_flags=link_flags())
    except Exception:  # noqa: BLE001 - a head start only: the first build does it otherwise
        pass


def _missing_internals() -> list[str]:
    """The Inductor internals batching reads that this torch lacks (none on the torch it was written for)."""
    from torch._inductor.async_compile import AsyncCompile
    from torch._inductor.codecache import CppPythonBindingsCodeCache as C

    template = getattr(C, "suffix_template", "")
    needed = [(AsyncCompile, "cpp_pybinding"), (AsyncCompile, "wait"), (C, "load_async"), (C, "load_pybinding"),
              (C, "_load_library")]
    missing = [f"{owner.__name__}.{name}" for owner, name in needed if not hasattr(owner, name)]
    for marker in (_ENTRY_MARK, _METHODS_MARK, "PyInit_{entry_func}"):
        if marker not in template:
            missing.append(f"CppPythonBindingsCodeCache.suffix_template ({marker!r})")
    return missing


def forget() -> None:
    """Forget the bindings loaded in this process (the libraries and their index stay on disk)."""
    _loaded.clear()


def _cache_dir() -> str:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return cache_dir()


def _function_key(argtypes, source: str) -> str:
    # the CPU by what ATen detects (Inductor's own pick of a vector ISA builds and loads a
    # probe library in a subprocess, once per process: most of a second a new process would
    # pay here for nothing when every function it needs is built)
    cpu = [sys.platform, platform.machine(), torch.backends.cpu.get_cpu_capability()]
    text = json.dumps([torch.__version__, cpu, _cache_dir(), list(argtypes), source])
    return hashlib.sha256(text.encode()).hexdigest()


def _index_path(key: str) -> str:
    return os.path.join(_cache_dir(), "fusionlab-functions", key[:2], key + ".json")


def _from_index(key: str):
    """The binding of a function built in an earlier compile (this process or an earlier one)."""
    if key in _loaded:
        return _loaded[key]
    from torch._inductor.codecache import CppPythonBindingsCodeCache

    try:
        with open(_index_path(key)) as f:
            entry = json.load(f)
        if not os.path.exists(entry["path"]):
            return None
        lib = CppPythonBindingsCodeCache._load_library(entry["path"], entry["library"])
        fn = getattr(lib, entry["symbol"])
    except (OSError, ValueError, KeyError, AttributeError, ImportError):
        return None
    _loaded[key] = fn
    return fn


def _remember(key: str, lib, symbol: str) -> None:
    path = _index_path(key)
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"path": lib.__file__, "library": lib.key, "symbol": symbol}, f)
        os.replace(tmp, path)


def _bindings(argtypes_of: list) -> str:
    """Inductor's Python binding code, one entry point ``kernel_<i>`` per function."""
    from torch._inductor.codecache import CppPythonBindingsCodeCache as C

    template = C.suffix_template
    head_end, tail_start = template.index(_ENTRY_MARK), template.index(_METHODS_MARK)
    head = template[:head_end].format(entry_func=_ENTRY, extra_parse_arg="")
    entry = template[head_end:tail_start]
    parts = [head]
    for i, argtypes in enumerate(argtypes_of):
        parse = ", ".join(f"parse_arg<{t.replace('const ', '')}>(args, {n})" for n, t in enumerate(argtypes))
        parts.append(entry.format(entry_func=f"{_ENTRY}_{i}", arg_len=len(argtypes),
                                  call_entry_func=f"{_ENTRY}_{i}({parse}); Py_RETURN_NONE;"))
    methods = "".join(f'    {{"{_ENTRY}_{i}", {_ENTRY}_{i}_py, METH_VARARGS, ""}},\n' for i in range(len(argtypes_of)))
    tail = template[tail_start:].format(entry_func=_ENTRY)
    start = tail.index("{", tail.index("py_methods[]")) + 1
    tail = tail[:start] + "\n" + methods + "    {NULL, NULL, 0, NULL}};" + tail[tail.index("};", start) + 2:]
    return "\n".join(parts) + tail


def library_source(functions: list[tuple[list, str]]) -> str:
    """One C++ file holding every function (its ``kernel`` renamed ``kernel_<i>``) and its binding."""
    includes = [PREFIX_INCLUDE] + ([PROFILE_INCLUDE] if any(PROFILE_INCLUDE in s for _, s in functions) else [])
    body = []
    for i, (_, source) in enumerate(functions):
        body.append(f"#define {_ENTRY} {_ENTRY}_{i}\n{source}\n#undef {_ENTRY}")
    return "\n".join(includes) + "\n" + "\n".join(body) + "\n" + _bindings([a for a, _ in functions])


class _Batch:
    """The functions one compile asked for that no library holds yet; built on first need."""

    def __init__(self):
        self.functions: list[tuple[str, list, str]] = []  # (key, argtypes, source)
        self.bindings: dict[str, object] | None = None

    def add(self, key: str, argtypes, source: str) -> _Pending:
        if key not in {k for k, _, _ in self.functions}:
            self.functions.append((key, list(argtypes), source))
        return _Pending(self, key)

    def binding(self, key: str):
        with _lock:
            if self.bindings is None:
                self.bindings = self._build()
            found = self.bindings[key]
        if isinstance(found, Exception):  # this function's own build failed: its caller sees why
            raise found
        return found

    def _build(self) -> dict[str, object]:
        from torch._inductor.async_compile import get_compile_threads
        from torch._inductor.codecache import CppPythonBindingsCodeCache as C

        global _collecting
        if _collecting is self:
            _collecting = None  # later requests start a new batch
        found = {k: _from_index(k) for k, _, _ in self.functions}  # built since it was collected
        todo = [(k, a, s) for k, a, s in self.functions if found[k] is None]
        out = {k: fn for k, fn in found.items() if fn is not None}
        if len(todo) == 1:  # nothing to share: Inductor's own library for it
            out.update(_one_by_one(todo))
            return out
        n_libs = max(1, min(get_compile_threads() or 1, len(todo) // _MIN_PER_LIBRARY))
        chunks = [todo[i::n_libs] for i in range(n_libs)]
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=n_libs) as pool:
                def build(flags):  # every chunk's library, side by side when there are two
                    loads = [C.load_async(library_source([(a, s) for _, a, s in chunk]), "cpu",
                                          submit_fn=pool.submit if n_libs > 1 else None, extra_flags=flags)
                             for chunk in chunks]
                    return [load() for load in loads]

                libs = _linked(build)
        except Exception as e:  # noqa: BLE001 - built again Inductor's way, one function at a time
            from .._env import debug

            debug(1, f"one library for {len(todo)} C++ functions failed ({type(e).__name__}: {e}); "
                     "building each on its own")
            out.update(_one_by_one(todo))
            return out
        _counts["built"] += len(todo)
        _counts["libraries"] += len(libs)
        for chunk, lib in zip(chunks, libs):
            for i, (k, _, _) in enumerate(chunk):
                out[k] = _loaded[k] = getattr(lib, f"{_ENTRY}_{i}")
                _remember(k, lib, f"{_ENTRY}_{i}")
        return out


def _one_by_one(functions) -> dict[str, object]:
    """Inductor's own build: a library per function (its binding's ``__self__`` is the library).
    A function that fails to build gets its error, raised where it is called: the functions
    built with it (other compiles' among them) do not pay for it."""
    out: dict[str, object] = {}
    for k, a, s in functions:
        try:
            out[k] = _loaded[k] = _linked(functools.partial(_pybinding, a, s))
        except Exception as e:  # noqa: BLE001 - Inductor's build error, kept for the caller
            out[k] = e
            continue
        _counts["built"] += 1
        _counts["libraries"] += 1
        _remember(k, out[k].__self__, _ENTRY)
    return out


_gold_failed = False  # a build linked with gold failed where the default linker's did not


def link_flags() -> tuple[str, ...]:
    """The flags that link fusionlab's libraries with GNU gold: on Linux, where ``ld.gold`` is on
    the PATH (binutils ships it), ``FUSIONLAB_GOLD`` is not ``0`` and gold has not failed in this
    process; else none (the compiler's default linker)."""
    if _gold_failed or os.environ.get("FUSIONLAB_GOLD", "1") == "0" or platform.system() != "Linux":
        return ()
    return ("-fuse-ld=gold",) if _which("ld.gold") else ()


@functools.cache
def _which(program: str) -> str | None:
    return shutil.which(program)


def _linked(build):
    """``build(flags)`` with :func:`link_flags`. If that fails, once more with none: if that
    builds, gold is not used again in this process (a linker that cannot link costs a build,
    never a library); if it fails too, the code is at fault, and its error stands."""
    global _gold_failed
    flags = link_flags()
    if not flags:
        return build(())
    try:
        return build(flags)
    except Exception as e:  # noqa: BLE001 - built again with the default linker
        failed = e
    built = build(())
    from .._env import debug

    _gold_failed = True
    debug(1, f"a build linked with {' '.join(flags)} failed ({type(failed).__name__}) and built with the "
             "default linker: the default linker from now on")
    return built


def _pybinding(argtypes, source: str, flags):
    from torch._inductor.codecache import CppPythonBindingsCodeCache as C

    return C.load_pybinding(argtypes, source, extra_flags=flags)


_collecting: _Batch | None = None


class _Pending:
    """A C++ function not built yet, where Inductor's module expects its binding: built on its
    first call (with every function collected with it), then put in its place in the module."""

    __slots__ = ("batch", "key", "homes")

    def __init__(self, batch: _Batch, key: str):
        self.batch, self.key = batch, key
        self.homes: list[tuple[dict, str]] = []  # (module globals, name) that hold this stand-in

    def result(self):
        return self.batch.binding(self.key)

    def __call__(self, *args):
        fn = self.result()
        for scope, name in self.homes:
            if scope.get(name) is self:
                scope[name] = fn
        return fn(*args)


def _cpp_pybinding(self, argtypes, source_code: str):
    global _collecting
    key = _function_key(argtypes, source_code)
    with _lock:
        fn = _from_index(key)
        if fn is not None:
            _counts["found"] += 1
            return fn
        if _collecting is None:
            _collecting = _Batch()
        return _collecting.add(key, argtypes, source_code)


@contextlib.contextmanager
def batched_builds():
    """Inside: the C++ functions a compiled module asks for are found built, or collected; the
    collected ones are built as one library on the first call of any of them, so compiles
    that run nothing in between (the groups of a candidate table) share one build."""
    from unittest import mock

    from torch._inductor.async_compile import AsyncCompile

    wait = AsyncCompile.wait

    def wait_for_inductors_own(self, scope):
        for name, value in list(scope.items()):
            if isinstance(value, _Pending):  # built on first call: later compiles may add to its library
                value.homes.append((scope, name))
        return wait(self, scope)

    if os.environ.get("FUSIONLAB_BATCH_BUILDS", "1") == "0":  # Inductor's way: one library per function
        yield
        return
    missing = _missing_internals()
    if missing:  # another torch: Inductor builds its own way, and fusionlab says why once
        from .._env import debug

        debug(1, f"C++ functions built one library each (Inductor's way): torch {torch.__version__} lacks "
                 f"{', '.join(missing)}")
        yield
        return
    # the batch outlives the compile: the next compile adds to it until a function is called
    with mock.patch.object(AsyncCompile, "cpp_pybinding", _cpp_pybinding), \
            mock.patch.object(AsyncCompile, "wait", wait_for_inductors_own):
        yield
