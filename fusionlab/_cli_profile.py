"""``python -m fusionlab profile``: profile a zoo model's training step, print the table, write a report.

    python -m fusionlab profile --model gpt2-tiny [--batch B] [--threads N] [options]

The options (--steps, --warmup, --budget, --max-steps, --fuse, --compare, --gpu, --optimizer,
--executor, --html,
--trace) and their defaults are :func:`fusionlab.profile_options.add_profile_options`,
the same as ``%fusionlab profile`` takes.
"""

from __future__ import annotations

import argparse

from .profile_options import add_profile_options


def add_profile_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "profile",
        help="time training steps of a zoo model: eager vs fused plan vs torch.compile (+ modeled GPU)",
        description="Time whole training steps (interleaved) of a zoo model: eager, the fused plan and "
                    "torch.compile, measured on this machine; plus the plan modeled on a GPU's spec.",
    )
    p.add_argument("--model", default="gpt2-tiny", help="zoo model name (see fusionlab.zoo.names())")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the zoo model's)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    add_profile_options(p)
    p.set_defaults(func=run_profile)
    return p


def run_profile(args) -> int:
    import torch

    from . import zoo
    from .capture import capture
    from .plan import plan_for
    from .profiler import profile

    if args.threads:
        torch.set_num_threads(args.threads)
    zm = zoo.get(args.model, batch=args.batch)
    print(f"== {zm.name}: {zm.description}")
    plan = plan_for(capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn), args.fuse)
    print(plan.summary())
    optimizer = None if args.optimizer == "none" else args.optimizer
    res = profile(zm.model, zm.inputs, plan=plan, loss_fn=zm.loss_fn, steps=args.steps, warmup=args.warmup,
                  compare=args.compare, gpu=args.gpu, optimizer=optimizer, trace=args.trace,
                  model_name=zm.name, executor=args.executor, budget_s=args.budget,
                  max_steps=args.max_steps)
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
