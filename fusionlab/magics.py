"""The ``%fusionlab`` / ``%%fusionlab`` IPython magics (``%load_ext fusionlab``).

Line magic::

    %fusionlab profile MODEL [INPUTS] [--loss NAME] [options]
    %fusionlab inductor MODEL [INPUTS] [--loss NAME]   fusionlab's candidates vs torch.compile's fusions
    %fusionlab kernels          the current plan's kernels: id, pattern, check status
    %fusionlab plan             the current plan (selection and modeled summary)
    %fusionlab help

MODEL and INPUTS are names (or expressions) in the notebook's namespace; INPUTS is a
tensor or a tuple of them. MODEL may be a zoo model, ``zoo:gpt2-block``, and then INPUTS
is optional. The "current plan" is the last one the magic profiled or created. The
options (--steps 20, --warmup 5, --budget 20, --max-steps 400, --fuse, --compare, --gpu,
--optimizer, --executor, --html, --trace) are those of ``python -m fusionlab profile``, from one definition:
:func:`fusionlab.profile_options.add_profile_options`; ``%fusionlab help`` lists them.

Cell magic: ``%%fusionlab profile [--steps N] [--warmup N]`` runs the cell body (say, one
training step) ``warmup + steps`` times and reports the median and spread of the timed
runs.

A bad argument prints the usage, never a traceback.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import time

from .profile_options import add_profile_options, add_timing_options


class UsageError(Exception):
    """A bad magic argument: the message is printed with the usage."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # never sys.exit from inside a notebook
        raise UsageError(message)

    def exit(self, status=0, message=None):
        raise UsageError(message or "")


def profile_parser() -> _Parser:
    p = _Parser(prog="%fusionlab profile", add_help=False)
    p.add_argument("model", metavar="MODEL", help="a name or expression in the notebook, or zoo:NAME")
    p.add_argument("inputs", nargs="?", metavar="INPUTS", help="a tensor or a tuple of them (optional for zoo:)")
    p.add_argument("--loss", default=None, metavar="NAME", help="loss_fn(output) -> scalar, a name in the notebook")
    add_profile_options(p)  # the same options and defaults as python -m fusionlab profile
    return p


def inductor_parser() -> _Parser:
    p = _Parser(prog="%fusionlab inductor", add_help=False)
    p.add_argument("model", metavar="MODEL", help="a name or expression in the notebook, or zoo:NAME")
    p.add_argument("inputs", nargs="?", metavar="INPUTS", help="a tensor or a tuple of them (optional for zoo:)")
    p.add_argument("--loss", default=None, metavar="NAME", help="loss_fn(output) -> scalar, a name in the notebook")
    return p


def cell_parser() -> _Parser:
    p = _Parser(prog="%%fusionlab profile", add_help=False)
    add_timing_options(p)
    return p


def _options_help() -> str:
    """The profile options, as argparse lists them (one definition, shared with the CLI)."""
    text = profile_parser().format_help()
    head = next((h for h in ("options:", "optional arguments:") if h in text), None)
    return (text[text.index(head) + len(head):] if head else text).strip("\n").rstrip()


USAGE = f"""\
%fusionlab profile MODEL [INPUTS] [--loss NAME] [options]   profile training steps
%fusionlab inductor MODEL [INPUTS] [--loss NAME]   candidates vs torch.compile's own fusions (the diff)
%fusionlab kernels          the current plan's kernels (id, pattern, check status)
%fusionlab plan             the current plan
%fusionlab help             this text
%%fusionlab profile [--steps N] [--warmup N]      time the cell body (median, spread)

MODEL, INPUTS: names in the notebook namespace (INPUTS a tensor or a tuple), or
MODEL = zoo:NAME (a fusionlab.zoo model; then INPUTS is optional).
The options of profile, the same as python -m fusionlab profile's:
{_options_help()}"""


class CellTiming:
    """Wall-clock of the runs of a ``%%fusionlab profile`` cell (measured, this machine)."""

    def __init__(self, samples: list[float], warmup: int, device: str):
        self.samples = samples
        self.warmup = warmup
        self.device = device

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1e3

    @property
    def min_ms(self) -> float:
        return min(self.samples) * 1e3

    @property
    def max_ms(self) -> float:
        return max(self.samples) * 1e3

    @property
    def iqr_ms(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return (q[2] - q[0]) * 1e3

    def __repr__(self) -> str:
        return (f"cell: median {self.median_ms:.3f} ms, IQR {self.iqr_ms:.3f} ms, "
                f"min {self.min_ms:.3f}, max {self.max_ms:.3f} over {len(self.samples)} runs "
                f"after {self.warmup} warm-up (measured on {self.device})")

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(repr(self))}</pre>"


class FusionlabExtension:
    """State of the loaded extension: the current plan and the last profile."""

    def __init__(self, shell):
        self.shell = shell
        self.plan = None
        self.last_result = None
        self.last_cell = None
        self.last_diff = None

    # ------------------------------------------------------------------ entry

    def magic(self, line: str, cell: str | None = None):
        try:
            argv = shlex.split(line or "")
        except ValueError as e:
            return self._usage(str(e))
        if not argv or argv[0] in ("help", "-h", "--help"):
            print(USAGE)
            return None
        cmd, rest = argv[0], argv[1:]
        try:
            if cell is not None:
                if cmd != "profile":
                    raise UsageError(f"the cell magic takes 'profile', not {cmd!r}")
                return self.profile_cell(rest, cell)
            if cmd == "profile":
                return self.profile(rest)
            if cmd == "inductor":
                return self.inductor(rest)
            if cmd == "kernels":
                return self.kernels(rest)
            if cmd == "plan":
                return self.show_plan(rest)
            raise UsageError(f"unknown command {cmd!r}")
        except UsageError as e:
            return self._usage(str(e))
        except Exception as e:  # noqa: BLE001 - one readable line, not a traceback
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"fusionlab: error: {type(e).__name__}: {msg}")
            return None

    def _usage(self, message: str):
        if message:
            print(f"fusionlab: {message}")
        print(USAGE)
        return None

    # ------------------------------------------------------------------ commands

    def _lookup(self, expr: str, what: str):
        ns = self.shell.user_ns if self.shell is not None else {}
        try:
            return eval(expr, ns)  # noqa: S307 - the user's own notebook namespace
        except NameError:
            raise UsageError(f"{what} {expr!r} is not defined in the notebook") from None
        except SyntaxError:
            raise UsageError(f"{what} {expr!r} is not a name or expression") from None

    def profile(self, argv: list[str]):
        args = profile_parser().parse_args(argv)
        model, inputs, loss_fn, name = self._model_and_inputs(args)
        from .capture import capture
        from .plan import plan_for
        from .profiler import profile

        self.plan = plan_for(capture(model, *inputs, loss_fn=loss_fn), args.fuse)
        result = profile(model, inputs, plan=self.plan, loss_fn=loss_fn, steps=args.steps, warmup=args.warmup,
                         compare=args.compare, gpu=args.gpu, optimizer=args.optimizer, trace=args.trace,
                         model_name=name, executor=args.executor,
                         budget_s=args.budget, max_steps=args.max_steps)
        self.last_result = result
        if args.html:
            path = result.to_html(args.html)
            print(f"fusionlab: report written to {path}")
        return result

    def inductor(self, argv: list[str]):
        """Capture MODEL, find its candidates, compile it with Inductor and show the diff; the new
        plan (nothing selected) becomes the current plan (``plan.select_like_inductor()`` starts
        from torch.compile's choices)."""
        args = inductor_parser().parse_args(argv)
        model, inputs, loss_fn, _name = self._model_and_inputs(args)
        from .capture import capture
        from .inductor import inductor_diff
        from .plan import FusionPlan

        self.plan = FusionPlan(capture(model, *inputs, loss_fn=loss_fn))
        self.last_diff = inductor_diff(self.plan)
        print(self.last_diff)
        return None

    def _model_and_inputs(self, args):
        """(model, inputs as a tuple, loss_fn, name or None) from MODEL, INPUTS and --loss."""
        loss_fn = self._lookup(args.loss, "loss") if args.loss else None
        name = None
        if args.model.startswith("zoo:"):
            from . import zoo

            zname = args.model[4:]
            if zname not in zoo.names():
                raise UsageError(f"unknown zoo model {zname!r}; known: {', '.join(zoo.names())}")
            zm = zoo.get(zname)
            model, inputs, name = zm.model, zm.inputs, zm.name
            loss_fn = loss_fn or zm.loss_fn
            if args.inputs:
                inputs = self._lookup(args.inputs, "inputs")
        else:
            model = self._lookup(args.model, "model")
            if not args.inputs:
                raise UsageError("give the inputs: %fusionlab profile MODEL INPUTS")
            inputs = self._lookup(args.inputs, "inputs")
        inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        return model, inputs, loss_fn, name

    def kernels(self, argv: list[str]):
        if argv:
            raise UsageError(f"'kernels' takes no arguments, got {' '.join(argv)}")
        if self.plan is None:
            print("fusionlab: no current plan yet: run %fusionlab profile MODEL INPUTS first")
            return None
        return KernelTable.from_plan(self.plan, self.last_result)

    def show_plan(self, argv: list[str]):
        if argv:
            raise UsageError(f"'plan' takes no arguments, got {' '.join(argv)}")
        if self.plan is None:
            print("fusionlab: no current plan yet: run %fusionlab profile MODEL INPUTS first")
        return self.plan

    def profile_cell(self, argv: list[str], cell: str):
        args = cell_parser().parse_args(argv)
        import torch

        code = compile(cell, "<%%fusionlab cell>", "exec")
        ns = self.shell.user_ns if self.shell is not None else {}
        cuda = torch.cuda.is_available()
        samples = []
        for i in range(args.warmup + args.steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            exec(code, ns)  # noqa: S102 - the user's own cell
            if cuda:
                torch.cuda.synchronize()
            if i >= args.warmup:
                samples.append(time.perf_counter() - t0)
        device = f"cuda ({torch.cuda.get_device_name()})" if cuda else f"cpu ({torch.get_num_threads()} threads)"
        self.last_cell = CellTiming(samples, args.warmup, device)
        return self.last_cell


class KernelTable:
    """The current plan's kernels: id, pattern, whether each ran fused and its check."""

    def __init__(self, rows: list[tuple], executor: str):
        self.rows = rows  # (id, pattern, nodes, status, detail)
        self.executor = executor

    @classmethod
    def from_plan(cls, plan, result=None) -> KernelTable:
        statuses, report = {}, None
        executor = "not built yet (profile the plan, or plan.kernels())"
        if result is not None:
            try:
                v = result.variant("fusionlab")
            except KeyError:
                v = None
            if v is not None and v.report is not None and result.plan is plan:
                statuses = {s.candidate: s for s in v.report.kernels}
                report = v.report
                executor = v.executor
        rows = []
        for c in plan.selected:
            s = statuses.get(c.id)
            if s is None:
                status, detail = "not checked", ""
            elif s.used:
                status = "ok, fused"
                chk = s.check
                detail = (f"max abs err {chk.max_abs:.2g}, max rel err {chk.max_rel:.2g}" if chk is not None
                          and not chk.error else "")
                loops = report.loops_text(c.id)  # statuses come from this report
                if loops:  # how Inductor compiled it inside the whole step
                    detail += f"; {loops}"
            else:
                status, detail = "NOT fused", s.reason
            rows.append((c.id, c.pattern, len(c.nodes), status, detail))
        return cls(rows, executor)

    def __repr__(self) -> str:
        lines = [f"{len(self.rows)} kernels of the current plan (executor: {self.executor})",
                 f"{'id':38} {'pattern':28} {'nodes':>5}  check"]
        for cid, pat, n, status, detail in self.rows:
            lines.append(f"{cid:38} {pat:28} {n:5d}  {status}" + (f" ({detail})" if detail else ""))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>" for r in self.rows
        )
        return (f"<b>{len(self.rows)} kernels</b> (executor: {html.escape(self.executor)})<table><tr><th>id</th>"
                "<th>pattern</th><th>nodes</th><th>check</th><th>detail</th></tr>" + body + "</table>")


def _make_magics_class():
    from IPython.core.magic import Magics, line_cell_magic, magics_class

    @magics_class
    class FusionlabMagics(Magics):
        def __init__(self, shell, ext: FusionlabExtension):
            super().__init__(shell)
            self.ext = ext

        @line_cell_magic
        def fusionlab(self, line, cell=None):
            return self.ext.magic(line, cell)

    FusionlabMagics.fusionlab.__doc__ = USAGE
    return FusionlabMagics


def load_ipython_extension(ipython) -> FusionlabExtension:
    """Register ``%fusionlab`` and ``%%fusionlab``; loading twice keeps the same state."""
    ext = getattr(ipython, "_fusionlab_extension", None)
    if ext is None:
        ext = FusionlabExtension(ipython)
        ipython._fusionlab_extension = ext
    magics = _make_magics_class()(ipython, ext)
    ipython.register_magics(magics)
    return ext


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext fusionlab``: the magics stay registered but the state is dropped."""
    if hasattr(ipython, "_fusionlab_extension"):
        del ipython._fusionlab_extension
