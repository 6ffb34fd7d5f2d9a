"""Group checks: each compiled group against the eager ops it replaces, and what is known of them.

:func:`check_groups` runs one or many groups (one call of a compiled group, or of a bundle
of a graph's groups compiled together) on fresh random inputs with the captured shapes,
strides and dtypes, then once more with NaN, +inf and -inf written into the floating inputs,
and compares every output with eager (``check.check_outputs``: within tolerance, or no
further from a float64 run than eager is). Results are kept in this process and in
fusionlab's disk cache (namespace "checks") under :func:`check_key`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import time
from pathlib import Path

import torch
import torch.fx

from .. import cache
from ..check import CheckResult, check_outputs, float64_reference, random_tensor, special_tensor

CHECKS = "checks"  # fusionlab.cache namespace of group check results
KNOWN: dict[str, CheckResult] = {}  # check results of this process, by check_key


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    """The fusionlab code a check result depends on: the executors, the check, the subgraph."""
    from .. import check
    from ..kernels import kernel
    from . import bundle, groups, policy

    h = hashlib.sha256()
    for f in (__file__, groups.__file__, bundle.__file__, policy.__file__, check.__file__, kernel.__file__):
        h.update(Path(f).read_bytes())
    return h.hexdigest()


def structure(sub: torch.fx.GraphModule) -> list:
    """The subgraph's ops and wiring without node names: two layers' identical groups are one."""
    index = {n: i for i, n in enumerate(sub.graph.nodes)}

    def ref(a):
        return torch.fx.node.map_arg(a, lambda n: f"%{index[n]}")

    return [(n.op, "" if n.op == "placeholder" else str(n.target), repr(ref(n.args)), repr(ref(n.kwargs)))
            for n in sub.graph.nodes]


def check_key(sub: torch.fx.GraphModule, metas: list[tuple], seed: int, trials: int, executor: str) -> str:
    """What a group's check result depends on: the executor that reports it, the subgraph's
    code (its ops), the inputs' shapes, strides, dtypes and devices, the check's seed and
    trials, and everything that decides the code Inductor generates for it (torch version,
    Inductor's config, CPU capability, threads) and the fusionlab code that checks it."""
    from torch._inductor import config as iconfig

    # Inductor's own hash of its config (kept until the config changes: a key per group is cheap)
    config = iconfig.get_hash().hex() if hasattr(iconfig, "get_hash") else sorted(
        (k, repr(v)) for k, v in iconfig.save_config_portable().items())
    return cache.make_key("group-check", executor, sub.code, [repr(m[1:]) for m in metas], seed, trials,
                          torch.__version__, torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(),
                          config, _code_version())


def stored_check(key: str) -> CheckResult | None:
    """The result kept under `key` (this process, then the disk cache), or None."""
    found = KNOWN.get(key)
    if found is not None:
        return dataclasses.replace(found)
    try:
        payload = cache.get(key, CHECKS)
    except (cache.CacheCorruptError, OSError):
        return None
    if not isinstance(payload, dict):
        return None
    try:
        res = CheckResult(**payload)
    except TypeError:  # another CheckResult shape: check again
        return None
    res.shapes = tuple(tuple(s) for s in res.shapes)
    KNOWN[key] = res
    return dataclasses.replace(res)


def store_check(key: str, res: CheckResult) -> None:
    KNOWN[key] = dataclasses.replace(res)
    with contextlib.suppress(OSError):
        cache.put(key, dataclasses.asdict(res), CHECKS)


def new_result(kernel: str, metas: list[tuple], executor: str) -> CheckResult:
    res = CheckResult(kernel=kernel, ok=False, shapes=tuple(m[1] for m in metas), executor=executor)
    res.dtype = "/".join(sorted({str(m[3]).replace("torch.", "") for m in metas}))
    return res


def check_groups(run, subs: list[torch.fx.GraphModule], metas: list[list[tuple]], results: list[CheckResult],
                 gen: torch.Generator, trials: int, first: list[list[torch.Tensor]]) -> None:
    """Check the groups `subs` (eager) against `run(inputs of each group) -> outputs of each
    group` (compiled), folding each group's comparison into its entry of `results`.

    Runs: `first` (the inputs the groups were compiled with), fresh random inputs up to
    `trials`, and once more NaN and +-inf in the floating inputs (eager's rules for them may
    differ from Inductor's) for the groups that have floating inputs. Raises what `run` or
    eager raises: the caller decides what a failure of a run of many groups means.
    """
    start = time.perf_counter()
    floating = [any(m[3].is_floating_point for m in ms) for ms in metas]
    schedule = [(first, False)] + [(None, False)] * (max(1, trials) - 1)
    if any(floating):
        schedule.append((None, True))
    ok = [True] * len(subs)
    for ins, specials in schedule:
        if ins is None:
            ins = [[(special_tensor if specials and fl else random_tensor)(s, st, dt, dev, gen)
                    for _, s, st, dt, dev in ms] for ms, fl in zip(metas, floating)]
        # the same tensors (strides included: a clone of an expanded input is dense);
        # groups hold no in-place ops, so neither run changes them
        expected = [sub(*x) for sub, x in zip(subs, ins)]
        got = run(ins)
        for i, (sub, x) in enumerate(zip(subs, ins)):
            if specials and not floating[i]:
                continue
            # as Kernel.check: an output outside tolerance passes when it is no further from
            # a float64 run than eager is (Inductor keeps fp16/bf16 values in fp32 between
            # ops, eager rounds after each); with NaN/inf inputs, on the finite elements
            ok[i] &= check_outputs(results[i], got[i], expected[i], [f"output {j}" for j in range(len(expected[i]))],
                                   oracle=lambda sub=sub, x=x: float64_reference(sub, x), blowups=specials)
    seconds = (time.perf_counter() - start) / max(1, len(subs))
    for res, good in zip(results, ok):
        res.ok, res.seconds = good, seconds
