"""Command line: ``python -m fusionlab demo|cache|profile ...``."""

from __future__ import annotations

import argparse
import sys

from fusionlab._cli_profile import add_profile_parser


def _demo(args) -> int:
    import fusionlab as fl
    from fusionlab import zoo

    zm = zoo.get(args.model)
    print(f"== {zm.name}: {zm.description}")
    cap = fl.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn)
    print(cap.summary())
    cands = fl.find_candidates(cap)
    print()
    print(cands)
    print("\nWhy other kernel-launching nodes were left out (first 12):")
    print(cands.why_not(limit=12))
    plan = fl.FusionPlan(cap, cands)
    if args.select == "all":
        plan.select_all()
    else:
        plan.select(*args.select.split(","))
    print()
    print(plan.summary())
    if args.show_kernel:
        kernels = plan.kernels()
        print()
        print(kernels)
        key = args.show_kernel
        pick = next(
            (k for k in kernels
             if key in (k.source.candidate_id, k.source.pattern) or key in k.source.pattern.split("+")),
            None,
        )
        pick = pick or (kernels[0] if kernels else None)
        if pick is not None:
            print(f"\n== generated source of {pick.name} ({pick.source.candidate_id})\n")
            print(pick.source.source)
    return 0


def _cache(args) -> int:
    from fusionlab.cache import main as cache_main

    return cache_main(args.rest)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusionlab", description="fusionlab kernel-fusion explorer")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="capture a zoo model, print its candidates, a plan and a kernel")
    d.add_argument("--model", default="gpt2-block", help="zoo model name (see fusionlab.zoo.names())")
    d.add_argument("--select", default="all", help="'all' or comma-separated ids/patterns")
    d.add_argument("--show-kernel", default="softmax", help="pattern or id of a kernel to print ('' for none)")
    d.set_defaults(func=_demo)
    c = sub.add_parser("cache", help="the compile cache: info | clear")
    c.add_argument("rest", nargs=argparse.REMAINDER)
    c.set_defaults(func=_cache)
    add_profile_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, RuntimeError) as e:
        print(f"fusionlab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
