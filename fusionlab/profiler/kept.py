"""Compiled steps kept from one profile to the next: a re-profile after a toggle without starting over.

``profile(..., keep=KeptSteps())`` (the explorer's profile pane holds one) keeps each compiled
variant's step (its model copy, Dynamo's and AOTAutograd's traces, the compiled graphs). The
next profile of the same model, inputs, capture, loss, optimizer and executor takes them back:

* the model copy gets the user's model's current weights and buffers (``load_state_dict``,
  in place: the compiled step reads the same tensors), a new optimizer and no gradients;
* the fusionlab variant is re-planned to the new plan (``backend.replan``): graphs whose
  selected groups did not change keep their code, the others are checked and compiled again,
  a piece at a time (:mod:`fusionlab.executors.pieces`);
* the unfused and torch.compile variants run as they are (neither depends on the selection).

A step whose model, inputs, capture or settings differ, or that was captured with its
optimizer update (the fused update is compiled for one optimizer object), is built anew. What
was reused is said in the profile's notes. Eager and the reference rows are always new (they
compile nothing).
"""

from __future__ import annotations

import weakref

import torch

REUSABLE = ("unfused", "fusionlab", "inductor")


def _inputs_key(inputs) -> tuple:
    return tuple((tuple(x.shape), x.dtype, x.device.type, tuple(x.stride()), x.requires_grad)
                 if isinstance(x, torch.Tensor) else ("obj", repr(x)) for x in inputs)


class KeptSteps:
    """Each reusable variant's compiled step from the last profile that made it (see the module)."""

    def __init__(self):
        self._kept: dict[str, tuple[tuple, object, object]] = {}  # name -> (key, model ref, Variant)

    def __repr__(self) -> str:
        return f"<KeptSteps: {', '.join(self._kept) or 'none'}>"

    def clear(self) -> None:
        self._kept.clear()

    @staticmethod
    def key(name: str, model, inputs, plan, loss_fn, optimizer, lr: float, executor) -> tuple | None:
        """What a kept step must share with the profile that takes it (None: never kept)."""
        if name not in REUSABLE or getattr(plan.capture, "optimizer", None) is not None:
            return None
        opt = optimizer if isinstance(optimizer, str) or optimizer is None else id(optimizer)
        ex = executor if isinstance(executor, str) else id(executor)
        return (name, id(model), _inputs_key(inputs), id(plan.capture), id(loss_fn), opt, float(lr), ex,
                tuple(map(str, getattr(plan, "rules", ()))))

    def take(self, key: tuple | None, model, inputs, plan, optimizer_factory):
        """The kept variant for `key`, renewed for this profile, or None."""
        if key is None or key[0] not in self._kept:
            return None
        kept_key, ref, v = self._kept.pop(key[0])
        if kept_key != key or ref() is not model:
            return None
        try:
            v.model.load_state_dict(model.state_dict())
        except Exception:  # noqa: BLE001 - the model changed shape: build the step anew
            return None
        v.renew(inputs, optimizer_factory)
        if v.name == "fusionlab" and v.backend is not None:
            v.backend.replan(plan)
            v.result.report = v.backend.report
        v.reused = True
        return v

    def put(self, key: tuple | None, model, v) -> None:
        if key is not None and v.result.error is None:
            self._kept[key[0]] = (key, weakref.ref(model), v)


def kept_notes(variants) -> list[str]:
    """The profile's note on what was kept (none when nothing was)."""
    reused = [v.name + (" (re-planned)" if v.name == "fusionlab" else "") for v in variants if v.reused]
    if not reused:
        return []
    return [f"compiled steps kept from the previous profile: {', '.join(reused)}; no new trace, so their "
            "first step is not a compile (fusionlab: only graphs whose selected groups changed were compiled again)"]
