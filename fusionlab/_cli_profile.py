"""``python -m fusionlab profile``: profile a zoo model's training step, print the table, write a report.

    python -m fusionlab profile --model gpt2-tiny [--fuse all|p1,p2] [--steps N] [--warmup N]
        [--compare eager,fusionlab,inductor] [--gpu h100] [--html report.html] [--trace]
        [--executor auto|inductor|inductor-groups|triton]
"""

from __future__ import annotations

import argparse


def add_profile_parser(subparsers) -> argparse.ArgumentParser:
    from .profiler import EXECUTORS

    p = subparsers.add_parser(
        "profile",
        help="time training steps of a zoo model: eager vs fused plan vs torch.compile (+ modeled GPU)",
        description="Time whole training steps (interleaved) of a zoo model: eager, the fused plan and "
                    "torch.compile, measured on this machine; plus the plan modeled on a GPU's spec.",
    )
    p.add_argument("--model", default="gpt2-tiny", help="zoo model name (see fusionlab.zoo.names())")
    p.add_argument("--fuse", default="all", help="'all', 'none' or comma-separated candidate ids/patterns")
    p.add_argument("--steps", type=int, default=20, help="measured steps per variant (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up steps per variant (default 5)")
    p.add_argument("--compare", default="eager,fusionlab,inductor",
                   help="variants, comma-separated among eager,fusionlab,inductor")
    p.add_argument("--gpu", default="h100", help="GPU spec for the modeled columns: h100, a100, t4, rtx4090")
    p.add_argument("--optimizer", default="adamw", help="adamw, adam, sgd or none")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the zoo model's)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--executor", default="auto", choices=EXECUTORS,
                   help="what runs the fusionlab variant: auto (Triton on a GPU, inductor on CPU), "
                        "inductor (whole graphs, Inductor fusing only inside the groups), "
                        "inductor-groups (each group compiled alone, called from Python), "
                        "triton (fusionlab's kernels; the interpreter on CPU: correct, slow)")
    p.add_argument("--html", default=None, help="write a stand-alone HTML report here")
    p.add_argument("--trace", default=None, nargs="?", const=True,
                   help="export a Chrome trace (optionally: its path)")
    p.set_defaults(func=run_profile)
    return p


def run_profile(args) -> int:
    import torch

    from . import zoo
    from .cost import get_gpu
    from .profiler import make_plan, profile

    if args.steps < 1 or args.warmup < 0:
        raise ValueError("--steps must be >= 1 and --warmup >= 0")
    get_gpu(args.gpu)  # unknown GPU: a clear error before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    zm = zoo.get(args.model, batch=args.batch)
    print(f"== {zm.name}: {zm.description}")
    plan = make_plan(zm.model, zm.inputs, loss_fn=zm.loss_fn, fuse=args.fuse)
    print(plan.summary())
    optimizer = None if args.optimizer == "none" else args.optimizer
    res = profile(zm.model, zm.inputs, plan=plan, loss_fn=zm.loss_fn, steps=args.steps, warmup=args.warmup,
                  compare=args.compare, gpu=args.gpu, optimizer=optimizer, trace=args.trace or False,
                  model_name=zm.name, executor=args.executor)
    print()
    print(res.text())
    try:
        fl = res.variant("fusionlab")
    except KeyError:
        fl = None
    if fl is not None and fl.report is not None:
        print()
        print(fl.report)
    if args.html:
        path = res.to_html(args.html)
        print(f"\nreport written to {path}")
    return 0
