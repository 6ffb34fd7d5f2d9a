"""The tutorial notebooks' names, titles and links, kept in one place.

The README, each notebook's badges and ``tests/test_notebooks.py`` read them from here: the
project's public home, Binder (CPU, builds ``binder/``) and Colab (a GPU, when you ask for one).
``INSTALL_CELL`` is the first code cell of every notebook: it installs fusionlab where it is
missing (Colab, a fresh machine) and does nothing where it is installed (Binder, CI, ``make
notebook``).
"""

from __future__ import annotations

REPO = "fusionlab/fusionlab"
HOME = f"https://github.com/{REPO}"
BINDER = f"https://mybinder.org/v2/gh/{REPO}/main?labpath=notebooks"
COLAB = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{{name}}"
BINDER_BADGE = "https://mybinder.org/badge_logo.svg"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"

NOTEBOOKS = {  # file name -> title, in course order
    "01_why_fusion.ipynb": "Why fusion: memory traffic, rooflines and honest benchmarks",
    "02_capture_and_look.ipynb": "Capture and look: the forward and backward graphs of a GPT-2 block",
    "03_pick_and_generate.ipynb": "Pick and generate: softmax, layer_norm and bias+GELU kernels, read and checked",
    "04_profile_a_training_step.ipynb": "Profile a training step: fused, unfused and torch.compile, measured",
    "05_your_own_fusion.ipynb": "Your own fusion: RMSNorm followed by SiLU",
}

INSTALL_CELL = """\
# Installs fusionlab where it is missing (Colab, a fresh machine); does nothing on Binder, in CI
# or after `make notebook`, where it is installed already. Colab keeps its own (CUDA) torch.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("fusionlab") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "fusionlab[notebook] @ git+https://github.com/fusionlab/fusionlab"])"""


def binder_url(name: str | None = None) -> str:
    """Binder's link: the notebooks folder, or one notebook in it."""
    return BINDER if name is None else f"{BINDER}%2F{name}"


def colab_url(name: str) -> str:
    if name not in NOTEBOOKS:
        raise ValueError(f"no tutorial notebook {name!r}; they are {', '.join(NOTEBOOKS)}")
    return COLAB.format(name=name)


def badges(name: str | None = None) -> str:
    """Markdown for the Binder and Colab badges (Colab: the named notebook, or the first)."""
    colab = colab_url(name or next(iter(NOTEBOOKS)))
    return (f"[![Binder]({BINDER_BADGE})]({binder_url(name)}) "
            f"[![Open In Colab]({COLAB_BADGE})]({colab})")
