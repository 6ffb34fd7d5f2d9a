"""Fuzzing fusionlab with random whole programs: the generator, the oracle and the checks.

``tests/test_fuzz.py`` runs them with hypothesis; ``bench/fuzz.py`` is the command line
for longer runs. What "equal to eager" means is :mod:`fusionlab.check`'s tolerance table,
the same one ``Kernel.check`` and the Inductor executors use.

    programs   Program, InputSpec, Op; gen_program(draw) with RandomDraw | HypothesisDraw
    model      FuzzModule(program), make_inputs(program): run a program in eager PyTorch
    oracle     run_float64 (ideal and perturbed float64 runs), mismatch(got, eager, refs, dtype)
    checks     check_codegen, check_e2e -> CaseResult; SilentMismatch; the known open bugs
"""

from .checks import (
    KNOWN_BUGS,
    KNOWN_LIMITS,
    KNOWN_MISMATCHES,
    CaseResult,
    SilentMismatch,
    Traced,
    check_codegen,
    check_e2e,
    known_bug,
    trace_program,
)
from .model import FuzzModule, apply_op, make_inputs, view_of
from .oracle import EPS, TOLERANCES, group_dtype, mismatch, reference_step, run_float64
from .programs import (
    BINARY,
    DIMS,
    DTYPES,
    LAYOUTS,
    MASK,
    REDUCE,
    SPECIALS,
    UNARY,
    VIEW,
    HypothesisDraw,
    InputSpec,
    Op,
    Program,
    RandomDraw,
    gen_program,
)

__all__ = [
    "BINARY", "DIMS", "DTYPES", "EPS", "KNOWN_BUGS", "KNOWN_LIMITS", "KNOWN_MISMATCHES", "LAYOUTS", "MASK",
    "REDUCE", "SPECIALS", "TOLERANCES", "UNARY", "VIEW", "CaseResult", "FuzzModule", "HypothesisDraw",
    "InputSpec", "Op", "Program", "RandomDraw", "SilentMismatch", "Traced", "apply_op", "check_codegen",
    "check_e2e", "gen_program", "group_dtype", "known_bug", "make_inputs", "mismatch", "reference_step",
    "run_float64", "trace_program", "view_of",
]
