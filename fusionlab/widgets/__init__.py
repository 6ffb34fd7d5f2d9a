"""fusionlab.widgets: the notebook explorer.

>>> ex = fusionlab.explore(model, x)      # or explore("gpt2-block"), explore(capture=cap)
>>> ex                                    # the app; ex.plan is the FusionPlan behind it

ipywidgets (and plotly, graphviz for the panes) are imported when an explorer is built.
"""

from __future__ import annotations

from ._explorer import Explorer

__all__ = ["Explorer", "explore"]


def explore(model=None, *inputs, loss_fn=None, capture=None, plan=None) -> Explorer:
    """Capture one training step of ``model(*inputs)`` (unless ``capture``/``plan`` is given) and
    open the explorer on it.

    ``model`` may also be a zoo name (``"mlp"``) or a ``zoo.ZooModel``: its inputs and loss
    come with it.
    """
    from .. import zoo
    from ..capture import capture as do_capture

    if isinstance(model, str):
        model = zoo.get(model)
    if isinstance(model, zoo.ZooModel):
        zm = model
        model, inputs = zm.model, inputs or zm.inputs
        loss_fn = loss_fn if loss_fn is not None else zm.loss_fn
    if plan is not None:
        capture = plan.capture
    if capture is None:
        if model is None:
            raise TypeError("explore(model, *inputs), explore('mlp') or explore(capture=...)")
        capture = do_capture(model, *inputs, loss_fn=loss_fn)
    return Explorer(capture, plan, model=model, inputs=inputs, loss_fn=loss_fn)
