"""Write the tutorial notebooks from the cell texts below (and, with --execute, run them).

    python notebooks/_build.py              # (re)write notebooks/*.ipynb, outputs stripped
    python notebooks/_build.py --execute    # also run each one top to bottom with nbclient

The notebooks are generated, so edit this file, not the .ipynb files; tests/test_notebooks.py
checks they match and runs every cell on CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def md(text: str) -> tuple[str, str]:
    return ("markdown", text.strip("\n"))


def code(text: str) -> tuple[str, str]:
    return ("code", text.strip("\n"))


# --------------------------------------------------------------------------- 01 quickstart

QUICKSTART = [
    md("""
# fusionlab quickstart: from a model to fused Triton kernels

**What you will learn**

1. capture the forward *and* backward graphs of one training step of a model;
2. see which ops could share one kernel (the *fusion candidates*) and why the others can't;
3. pick fusions in a `FusionPlan` and read what it would save (modeled, not measured);
4. generate the Triton kernels, read them, and check each against PyTorch;
5. run the fused training step and check it computes what eager PyTorch computes.

Everything here runs on a CPU: with no GPU, fusionlab runs its kernels in the
[Triton interpreter](https://triton-lang.org/main/programming-guide/chapter-3/debugging.html).
That is for correctness only: interpreter timings mean nothing, so this notebook times nothing.
"""),
    md("""
`import fusionlab` **first**: it decides whether Triton runs in the interpreter, which has to
happen before anything imports `triton`.
"""),
    code("""
import copy

import torch

import fusionlab
from fusionlab import viz, zoo

m = zoo.get("gpt2-block")  # a small hand-written GPT-2 block with example inputs
m
"""),
    md("""
## 1. Capture one training step

`fusionlab.capture` runs the model once under TorchDynamo and AOTAutograd, the same machinery
`torch.compile` uses, and keeps the ATen graphs: a forward graph (`fw0`) and a backward graph
(`bw0`). LayerNorm, softmax and GELU appear as the primitive ops they cost.
"""),
    code("""
cap = fusionlab.capture(m.model, *m.inputs, loss_fn=m.loss_fn)
cap
"""),
    code("""
fw = cap.graph("fw0")
for info in fw.kernel_nodes()[:12]:  # nodes that launch a kernel when run eagerly
    print(info)
"""),
    md("""
## 2. Fusion candidates

A candidate is a group of pointwise and reduction ops over one iteration space: one kernel could
compute them all, reading the group's inputs once and writing its outputs once. Byte counts are
**modeled**: counted from the graph, not measured.
"""),
    code("""
cands = fusionlab.find_candidates(cap)
cands
"""),
    code("""
print(cands.why_not(limit=8))  # every node left out gets a one-line reason
"""),
    md("""
The forward graph, nodes colored by kind, candidates drawn as boxes (with graphviz's `dot`
installed; otherwise a list and the DOT text).
"""),
    code("""
from IPython.display import HTML

HTML(viz.graph_html(fw, cands))
"""),
    md("""
## 3. A fusion plan

`FusionPlan` holds the candidates you pick: by id (`"fw0.gelu.0"`) or by pattern (`"softmax"`
picks every candidate with a softmax in it). A selection that could not run as a set of
kernels is refused with a `PlanError` that says why, and the plan stays as it was.
"""),
    code("""
plan = fusionlab.FusionPlan(cap)
plan.select("softmax", "layer_norm", "gelu")
plan
"""),
    code("""
try:
    plan.select("conv")  # this model has no convolution
except fusionlab.PlanError as e:
    print("refused:", e)
print(len(plan.selected), "candidates still selected")
"""),
    code("""
viz.plan_figure(plan)  # kernels and bytes per step, before and after (modeled)
"""),
    md("""
## 4. Kernels you can read

`plan.kernels()` writes one Triton kernel per selected candidate, builds it and checks it
against the eager ops it replaces. Each value is named after its FX node, one op a line, and
the comment says which ATen op and which module of the model it came from.
"""),
    code("""
kernels = plan.kernels()
kernels
"""),
    code("""
k = next(k for k in kernels if "softmax" in k.name)
src = k.source.source
print(src[src.index("@triton.jit\\ndef " + k.name):])
"""),
    md("""
## 5. Check against PyTorch

`Kernel.check()` runs the kernel and the eager subgraph on the same fresh random inputs (the
captured shapes, dtypes and strides) and compares every output within a dtype tolerance.
"""),
    code("""
result = k.check()
print(result)
assert result.ok
"""),
    md("""
## 6. The fused training step

`plan.compile(model)` is `torch.compile` with a backend that swaps each selected group for its
kernel (in the forward and the backward graph) and leaves every other op as in eager. A kernel
that fails its check is never used: its ops run eagerly and the report says so.

Fuse everything, run one step on a copy of the model, and compare the loss and every gradient
with an eager step on another copy.
"""),
    code("""
plan.select_all()
model_fused, model_eager = copy.deepcopy(m.model), copy.deepcopy(m.model)

fused_step = plan.compile(model_fused)
loss_fused = fused_step(*m.inputs)
loss_fused.backward()
print(fused_step.report)
"""),
    code("""
loss_eager = m.loss_fn(model_eager(*m.inputs))
loss_eager.backward()

torch.testing.assert_close(loss_fused, loss_eager)
for (name, p_fused), p_eager in zip(model_fused.named_parameters(), model_eager.parameters()):
    torch.testing.assert_close(p_fused.grad, p_eager.grad, rtol=1e-4, atol=1e-5, msg=name)
used = len(fused_step.report.used)
print(f"loss {loss_fused.item():.6f} (fused, {used} kernels) == {loss_eager.item():.6f} (eager); all gradients match")
"""),
    md("""
## Where next

* `02_fused_softmax.ipynb`: one kernel in depth, with its memory traffic counted.
* `03_explorer.ipynb`: the same pipeline in widgets, and the `%fusionlab` magic.
* `k.inspect("sm_90")` compiles a kernel for a real GPU target (PTX, SASS, registers) without
  a GPU; `fusionlab.profile(model, inputs, plan=plan)` measures whole training steps.
"""),
]

# --------------------------------------------------------------------------- 02 fused softmax

SOFTMAX = [
    md("""
# Fused softmax, counted

A retelling of Triton's [fused-softmax tutorial](https://triton-lang.org/main/getting-started/tutorials/02-fused-softmax.html),
with the kernel written by fusionlab instead of by hand.

**What you will learn**

* why a softmax written op by op is limited by memory traffic, with the bytes counted;
* how fusionlab finds the five ops one kernel can compute, and the kernel it writes for them;
* how that kernel is checked against `torch.softmax` before anything else is said about it;
* what fusing buys, *modeled* in bytes (on a CPU there is nothing honest to time);
* what changes when a row is too long for one block: the looped reduction.
"""),
    code("""
import torch

import fusionlab  # first: it switches Triton to the interpreter when there is no GPU
from fusionlab.kernels import Kernel, extract_subgraph
from fusionlab.codegen import generate
"""),
    md("""
## Motivation: the naive softmax

Triton's tutorial starts from this PyTorch function:

```python
def naive_softmax(x):
    x_max = x.max(dim=1)[0]              # read  MN elements, write M
    z = x - x_max[:, None]               # read  MN + M,      write MN
    numerator = torch.exp(z)             # read  MN,          write MN
    denominator = numerator.sum(dim=1)   # read  MN,          write M
    return numerator / denominator[:, None]  # read MN + M,   write MN
```

"Computing `y = naive_softmax(x)` requires reading 5MN + 2M elements from DRAM and writing back
3MN + 2M elements", while a fused kernel only needs to read `x` once and write `y` once.

`torch.softmax` is one call, but that is not what the hardware sees when it runs op by op:
captured at the ATen level with Inductor's decompositions, it *is* the naive softmax.
"""),
    code("""
class Softmax(torch.nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)


M, N = 128, 781  # 781: not a power of two, so the kernel must mask
x = torch.randn(M, N)
cap = fusionlab.capture(Softmax(), x, train=False)  # forward only, like the tutorial
graph = cap.graph("inf0")
for info in graph.kernel_nodes():
    print(info)
"""),
    md("""
## Memory traffic, counted

Each op run as its own kernel reads its inputs and writes its result. Counting elements over
the captured graph gives the tutorial's numbers exactly.
"""),
    code("""
def numel(node):
    val = node.meta["val"]
    return val.numel()


reads = writes = 0
print(f"{'op':24} {'reads':>10} {'writes':>10}")
for node in graph.gm.graph.nodes:
    if graph.nodes[node.name].kind not in ("pointwise", "reduction"):
        continue
    r = sum(numel(a) for a in node.all_input_nodes)
    w = numel(node)
    reads, writes = reads + r, writes + w
    print(f"{graph.nodes[node.name].op:24} {r:10,} {w:10,}")
print(f"{'total':24} {reads:10,} {writes:10,}")

assert reads == 5 * M * N + 2 * M and writes == 3 * M * N + 2 * M
print(f"reads 5MN + 2M = {reads:,} elements, writes 3MN + 2M = {writes:,} elements")
"""),
    md("""
## One candidate, one kernel

fusionlab finds that all five ops share one iteration space (rows of `x`, reduced along the
row) and makes them one candidate. Its modeled bytes: unfused, the traffic counted above;
fused, read `x` once and write `y` once.
"""),
    code("""
cands = fusionlab.find_candidates(cap)
cand = cands[0]
print(cand)
assert len(cands) == 1 and len(cand.nodes) == 5
assert cand.bytes_unfused == 4 * (reads + writes)  # float32: 4 bytes an element
assert cand.bytes_fused == 4 * 2 * M * N
print(f"modeled: {cand.bytes_unfused:,} B op by op -> {cand.bytes_fused:,} B fused "
      f"({cand.bytes_unfused / cand.bytes_fused:.1f}x less traffic)")
"""),
    md("""
## The generated kernel

Read it next to the graph above: every value is named after its FX node, one op a line, with
the ATen op in the comment; the module's docstring lists the ATen program it replaces,
constants included. As in Triton's tutorial, the kernel takes the row count and length
(`n_rows`, `n_cols`) and each tensor's row stride (`in_x_1_row_stride`: how far apart two rows
are in memory) as arguments; only the block sizes are `tl.constexpr`. A program instance owns
`XBLOCK` whole rows; a row of 781 is held in a block of `RBLOCK = 1024` lanes, and `rmask`
keeps the 243 extra lanes out of the max and the sum. The launcher below it fixes the input's
layout, allocates the output, picks the grid and passes `x.stride(0)` like the tutorial does.
"""),
    code("""
ks = generate(cand, graph)
print(ks.kind)
print(ks.source[:ks.source.index("import torch")])  # the ATen program it replaces
print(ks.source[ks.source.index("@triton.jit\\ndef " + ks.name):])
"""),
    md("""
## Check against PyTorch, before anything else

`Kernel.check()` runs the kernel and the five eager ops on fresh random inputs and compares
them; then the same kernel on our `x` against `torch.softmax`.
"""),
    code("""
kernel = Kernel(ks, extract_subgraph(graph.gm, cand))
result = kernel.check()
print(result)
assert result.ok

(y,) = kernel(x)
torch.testing.assert_close(y, torch.softmax(x, dim=-1))
print("kernel(x) matches torch.softmax(x, dim=-1)")
"""),
    md("""
## What fusing buys: modeled bytes

Triton's tutorial benchmarks its kernel on a GPU. Here there is no GPU, and the interpreter's
timings mean nothing, so the numbers below are **modeled**: bytes counted from the graph, and,
where `fusionlab.cost` is installed, a roofline time from GPU spec sheets. A softmax does
little arithmetic per byte, so it is memory-bound and its time follows its bytes.
"""),
    code("""
import importlib.util

print(f"bytes per call (modeled): op by op {cand.bytes_unfused / 2**20:.2f} MiB, "
      f"fused {cand.bytes_fused / 2**20:.2f} MiB")
if importlib.util.find_spec("fusionlab.cost") is not None:
    from fusionlab import cost

    for gpu, (unfused, fused) in cost.compare_gpus(cap).items():
        print(f"{unfused.label:32} op by op {unfused.ms * 1e3:7.1f} us, fused {fused.ms * 1e3:6.1f} us")
else:
    print("(fusionlab.cost is not installed: no GPU roofline)")
"""),
    code("""
try:
    import plotly.graph_objects as go
except ImportError:
    go = None
fig = None
if go is not None:
    names = [graph.nodes[n].op.split(".")[1] for n in cand.nodes]
    traffic = [4 * (sum(numel(a) for a in node.all_input_nodes) + numel(node))
               for node in graph.gm.graph.nodes if node.name in cand.nodes]
    fig = go.Figure([go.Bar(name=op, x=["op by op"], y=[b / 1024]) for op, b in zip(names, traffic)]
                    + [go.Bar(name="fused kernel", x=["fused"], y=[cand.bytes_fused / 1024])])
    fig.update_layout(barmode="stack", title="KiB moved by one softmax call (modeled)",
                      yaxis_title="KiB (modeled)", height=360, template="plotly_white")
fig
"""),
    md("""
## Rows longer than a block: the looped reduction

On a GPU a persistent reduction keeps a whole row in registers; past a few thousand elements
(`persistent_max`, 4096 by default) that no longer fits, and the kernel loops over the row
instead: one pass for the max, one for the sum, and a last one that writes the results. Here
we force the loop on a row of 4096 with `persistent_max=1024`.

The loop re-reads `x` in every pass (three reads of each row instead of one). The candidate's
modeled bytes assume one read; on a GPU the later passes mostly hit the L2 cache when the rows
in flight fit in it.
"""),
    code("""
x_long = torch.randn(4, 4096)
cap_long = fusionlab.capture(Softmax(), x_long, train=False)
cand_long = fusionlab.find_candidates(cap_long)[0]
graph_long = cap_long.graph(cand_long.graph)
ks_long = generate(cand_long, graph_long, persistent_max=1024)
print(ks_long.kind)
print(ks_long.source[ks_long.source.index("@triton.jit\\ndef " + ks_long.name):ks_long.source.index("def _fix_layout")])
"""),
    code("""
looped = Kernel(ks_long, extract_subgraph(graph_long.gm, cand_long))
print(looped.check())
(y_long,) = looped(x_long)
torch.testing.assert_close(y_long, torch.softmax(x_long, dim=-1))
print("looped kernel matches torch.softmax")
"""),
    md("""
## Summary

* op by op, a softmax reads 5MN + 2M and writes 3MN + 2M elements; fused, 2MN in all;
* fusionlab found the five ops from `torch.softmax`'s decomposition and wrote one kernel;
* the kernel matched PyTorch before we said anything about what it saves;
* what it saves here is modeled. To measure a training step, see `fusionlab.profile` and the
  explorer in `03_explorer.ipynb`.
"""),
]

# --------------------------------------------------------------------------- 03 explorer

EXPLORER = [
    md("""
# The fusionlab explorer, and the `%fusionlab` magic

**What you will learn**

* open the explorer on a model: the fusion candidates, the graph of the training step (forward
  and backward, candidates drawn as clusters), the Triton kernel of whatever you click, a plan
  summary and a profiler, all linked;
* drive the same explorer from code: its state is a plain `FusionPlan`;
* use `%load_ext fusionlab` and the `%fusionlab` magic to profile from one line.

Numbers in the explorer say whether they are *modeled* (counted from the graph, or from a
GPU's spec sheet) or *measured* (and where). The graph is drawn in your browser by Graphviz
compiled to WebAssembly, shipped inside fusionlab: it needs no `dot` program and no network.
"""),
    code("""
import fusionlab  # first: it switches Triton to the interpreter when there is no GPU
from fusionlab import zoo

m = zoo.get("gpt2-block")
ex = fusionlab.explore(m.model, *m.inputs, loss_fn=m.loss_fn)
ex
"""),
    md("""
How to work in it:

* **click a candidate's cluster** in the graph (or tick its box in the list) to add it to the
  plan; click again to take it out. The list, the graph and the summary follow. A selection
  the plan refuses shows its reason in the message line and everything goes back.
* **click a node**: the kernel pane shows the Triton kernel of the candidate holding it, with
  the lines computing that node marked, and the line of *your model* that produced the node.
  Clicking a row in the list does the same for a candidate.
* **click a module box** (a collapsed block) to open it; **collapse all** closes them; the
  search box finds a node, op or module; drag to pan, scroll to zoom; `bw0` shows the backward.

Everything the widgets do is also a method. `ex.plan` is the `FusionPlan` behind them:
"""),
    code("""
ex.select("softmax", "layer_norm")  # the message line names the backward candidates to add
print(ex.plan)
print("graph shows as selected:", ex.graph.selected)
"""),
    code("""
ex.plan.summary()  # the same numbers as the summary tab (modeled)
"""),
    code("""
cid = ex.plan.selected[0].id
ex.focus(cid)        # what clicking its cluster or its row does: the kernel pane shows it
src = ex.kernel_text
print(src[src.index("@triton.jit\\ndef fused_"):src.index("def _fix_layout")])
print(ex.check())    # what 'check against PyTorch' does
"""),
    code("""
c = ex.plan.selected[0]
ex.focus(f"{c.graph}:{c.nodes[0]}")  # what clicking a node does: its kernel lines are marked
print("model source of", c.nodes[0], "->", ex.capture.graph(c.graph).nodes[c.nodes[0]].source)
ex.expand("attn")     # what clicking the 'attn' module box does (it is open already here)
ex.show_graph("bw0")  # what the 'bw0' button above the graph does
"""),
    md("""
## Profile (measured)

The **profile** tab times whole training steps on this machine. On a CPU the fusionlab variant
checks each selected group compiled alone by Inductor, then compiles the step with Inductor
allowed to fuse only inside your groups (the Triton interpreter is for correctness, not speed).
`unfused` is the same compile with nothing selected, so fusionlab against unfused is what your
fusions alone buy. A few steps keep this notebook quick; use more for numbers you want to quote.
"""),
    code("""
result = ex.profile(steps=3, warmup=1, compare=("eager", "unfused", "fusionlab"))
print(result)
"""),
    md("""
## The `%fusionlab` magic

`%load_ext fusionlab` registers `%fusionlab` (line) and `%%fusionlab` (cell). `%fusionlab help`
lists the commands; `%fusionlab profile MODEL INPUTS` captures, fuses every candidate and
profiles in one line (`zoo:NAME` for a zoo model).
"""),
    code("""
%load_ext fusionlab
%fusionlab help
"""),
    code("""
%fusionlab profile zoo:mlp --steps 3 --warmup 1 --compare eager,fusionlab
"""),
    code("""
%fusionlab kernels
"""),
    md("""
`%%fusionlab profile` times the body of a cell (here one eager training step of the MLP):
"""),
    code("""
mlp = zoo.get("mlp")
"""),
    code("""
%%fusionlab profile --steps 5 --warmup 1
mlp.model(*mlp.inputs).backward()
"""),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_fused_softmax.ipynb": SOFTMAX,
    "03_explorer.ipynb": EXPLORER,
}


def make(cells):
    """An nbformat v4 notebook (outputs empty) from (kind, source) pairs."""
    import nbformat
    from nbformat import v4

    nb = v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, source) in enumerate(cells):
        cell = v4.new_markdown_cell(source) if kind == "markdown" else v4.new_code_cell(source)
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating gives the same file
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def write(directory: Path = HERE) -> list[Path]:
    import nbformat

    paths = []
    for name, cells in NOTEBOOKS.items():
        path = directory / name
        nbformat.write(make(cells), path)
        paths.append(path)
    return paths


def execute(path: Path, timeout: int = 600, kernel_name: str = "python3"):
    """Run a notebook top to bottom in a fresh kernel; returns the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execute", action="store_true", help="run each notebook after writing it")
    parser.add_argument("names", nargs="*", help="notebooks to execute (default: all)")
    args = parser.parse_args(argv)
    paths = write()
    for p in paths:
        print(f"wrote {p.relative_to(HERE.parent)}")
    if args.execute:
        for p in paths:
            if args.names and p.name not in args.names:
                continue
            t = time.perf_counter()
            execute(p)
            print(f"executed {p.name} in {time.perf_counter() - t:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
