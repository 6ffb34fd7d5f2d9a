"""Running the fused update: the generated kernels on the optimizer's own parameters and state.

``FusedUpdate(cap.optimizer).step()`` replaces ``optimizer.step()`` (and the
``clip_grad_norm_`` before it) after ``loss.backward()``. The state lives where eager
PyTorch keeps it, ``optimizer.state[p]`` (``step``, ``exp_avg``, ``exp_avg_sq`` /
``momentum_buffer``), so a run can switch between the fused and the eager update.

Nothing is read back to the host: the learning rate is a device tensor refreshed (host to
device) only when ``param_group["lr"]`` changes, the step counter lives on the device, the
clip factor is computed inside the kernels. ``launches`` counts kernel launches per step.
"""

from __future__ import annotations

import torch

from .. import _env
from ..kernels.kernel import load_module
from .capture import OptimizerStep, UpdateGroup
from .kernels import GPU_BLOCK, INTERPRET_BLOCK, STATE_STEP, kernel_source
from .update import STATE

FORMS = ("multi_tensor", "param")


class FusedUpdate:
    """The captured optimizer update, run by fusionlab's Triton kernels.

    ``form="multi_tensor"``: one launch per group (of one param group and one dtype) per step,
    plus one for the clip's partial sums when clipping; ``form="param"``: one launch per
    parameter. ``optimizer`` defaults to the captured one; another instance of the same class
    built the same way (same groups, same shapes) may be given, e.g. a copy.
    """

    def __init__(self, step: OptimizerStep, form: str = "multi_tensor", optimizer=None, block: int | None = None):
        if not isinstance(step, OptimizerStep):
            raise TypeError(f"FusedUpdate takes capture.optimizer (an OptimizerStep), got {type(step).__name__}")
        if not step.fused:
            raise ValueError(f"the {step.name} update is not fused: {step.reason}")
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.info = step
        self.form = form
        self.optimizer = optimizer if optimizer is not None else step.optimizer
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if [tuple(p.shape) for p in self.params] != [tuple(p.shape) for p in step.params]:
            raise ValueError("this optimizer's parameters do not have the captured shapes")
        self.block = block or (INTERPRET_BLOCK if _env.INTERPRET else GPU_BLOCK)
        self.device = self.params[0].device
        self.sources = {g.index: kernel_source(step.chains[g.index], g.hyper.kind, g.dtype, clip=step.clip_grad_norm,
                                               form=form, group_tag=g.tag,
                                               param_names=[step.param_names[i] for i in g.params])
                        for g in step.groups}
        self.modules = {i: load_module(ks) for i, ks in self.sources.items()}
        self._lr = {g.index: torch.zeros((), dtype=torch.float32, device=self.device) for g in step.groups}
        self._lr_seen: dict[int, float] = {}
        self._counter = {g.index: torch.zeros(2, dtype=torch.float32, device=self.device) for g in step.groups}
        self._parity = 0
        self._tables: dict = {}
        self._ptr_tables: dict[tuple, torch.Tensor] = {}
        self.launches = 0  # kernel launches in all steps so far
        self.launches_per_step: list[int] = []

    # ------------------------------------------------------------------ state

    def _init_state(self, g: UpdateGroup) -> None:
        kind = g.hyper.kind
        for n, i in enumerate(g.params):
            p = self.params[i]
            st = self.optimizer.state[p]
            if not p.is_contiguous():
                raise ValueError(f"parameter {self.info.param_names[i]} is not contiguous; the fused update "
                                 "indexes it flat")
            for name in STATE[kind]:
                if name not in st:
                    st[name] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            if "step" in STATE_STEP[kind]:
                if "step" not in st:
                    st["step"] = torch.zeros((), dtype=torch.float32, device=self.device)
                elif st["step"].device != self.device:
                    st["step"] = st["step"].to(self.device)
                if n == 0:  # the group's counter starts from the state (a device copy, no host read)
                    self._counter[g.index][self._parity].copy_(st["step"])

    def _table(self, g: UpdateGroup, idx: list[int]):
        key = (g.index, tuple(idx))
        if key not in self._tables:
            numels = [self.params[i].numel() for i in idx]
            bt, bs = [], []
            for t, n in enumerate(numels):
                for s in range(0, n, self.block):
                    bt.append(t)
                    bs.append(s)
            self._tables[key] = (self._dev(numels, torch.int32), self._dev(bt, torch.int32),
                                 self._dev(bs, torch.int32), len(bt))
        return self._tables[key]

    def _dev(self, values, dtype) -> torch.Tensor:
        t = torch.tensor(values, dtype=dtype)
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)  # host to device, no wait
        return t

    def _ptrs(self, tensors) -> torch.Tensor:
        """A device table of the tensors' addresses (kept while they stay where they are)."""
        key = tuple(t.data_ptr() for t in tensors)
        table = self._ptr_tables.get(key)
        if table is None:
            if len(self._ptr_tables) > 256:  # gradients move each step: keep the cache small
                self._ptr_tables.clear()
            table = self._ptr_tables[key] = self._dev(list(key), torch.int64)
        return table

    # ------------------------------------------------------------------ the step

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (as ``optimizer.step()``)."""
        live = {}
        for g in self.info.groups:
            idx = [i for i in g.params if self.params[i].grad is not None]
            if idx:
                for i in idx:
                    if not self.params[i].grad.is_contiguous():
                        raise ValueError(f"the gradient of {self.info.param_names[i]} is not contiguous")
                live[g.index] = idx
                if self._lr_seen.get(g.index) is None:
                    self._init_state(g)
                lr = self.optimizer.param_groups[g.param_group]["lr"]
                if isinstance(lr, torch.Tensor):
                    self._lr[g.index].copy_(lr)
                elif self._lr_seen.get(g.index) != lr:
                    self._lr[g.index].fill_(lr)
                self._lr_seen[g.index] = lr if not isinstance(lr, torch.Tensor) else -1.0
        launches = 0
        clip = self.info.clip_grad_norm
        total_sq = None
        if clip is not None:  # pass 1: every block adds its gradients' sum of squares to one total
            total_sq = torch.zeros(1, dtype=torch.float32, device=self.device)
            for gi, idx in live.items():
                numels, bt, bs, nblocks = self._table(self._group(gi), idx)
                self.modules[gi].grad_sq_sum[(nblocks,)](
                    self._ptrs([self.params[i].grad for i in idx]), numels, bt, bs, total_sq, BLOCK=self.block)
                launches += 1
        clip_args = [total_sq] if clip is not None else []
        step_in = {gi: self._counter[gi][self._parity] for gi in live}
        step_out = {gi: self._counter[gi][1 - self._parity] for gi in live}
        for gi, idx in live.items():
            g = self._group(gi)
            kind = g.hyper.kind
            has_step = "step" in STATE_STEP[kind]
            mod = self.modules[gi]
            ps = [self.params[i] for i in idx]
            states = [[self.optimizer.state[p][name] for p in ps] for name in STATE[kind]]
            scalars = [self._lr[gi], step_in[gi], step_out[gi]]
            if self.form == "multi_tensor":
                numels, bt, bs, nblocks = self._table(g, idx)
                tables = [self._ptrs(ps), self._ptrs([p.grad for p in ps])] + [self._ptrs(s) for s in states]
                if has_step:
                    tables.append(self._ptrs([self.optimizer.state[p]["step"] for p in ps]))
                getattr(mod, f"{kind}_multi_tensor")[(nblocks,)](
                    *tables, numels, bt, bs, *scalars, *clip_args, BLOCK=self.block)
                launches += 1
            else:
                fn = getattr(mod, f"{kind}_param")
                for n, p in enumerate(ps):
                    args = [p, p.grad] + [s[n] for s in states]
                    if has_step:
                        args.append(self.optimizer.state[p]["step"])
                    fn[(-(-p.numel() // self.block),)](*args, p.numel(), *scalars, *clip_args,
                                                       BLOCK=self.block)
                    launches += 1
        self._parity = 1 - self._parity
        self.launches += launches
        self.launches_per_step.append(launches)

    def _group(self, index: int) -> UpdateGroup:
        return self.info.groups[index]

    def __repr__(self) -> str:
        return (f"FusedUpdate({self.info.name}, {self.form}, {len(self.info.groups)} group(s), "
                f"{len(self.params)} params, launches/step={self.launches_per_step[-1:] or '-'})")


def fused_update(capture, form: str = "multi_tensor", optimizer=None) -> FusedUpdate:
    """The fused update of a capture made with ``optimizer=`` (see :class:`FusedUpdate`)."""
    step = capture if isinstance(capture, OptimizerStep) else getattr(capture, "optimizer", None)
    if step is None:
        raise ValueError("this capture has no optimizer update: fusionlab.capture(..., optimizer='adamw')")
    return FusedUpdate(step, form=form, optimizer=optimizer)
