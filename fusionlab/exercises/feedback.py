"""What a checker hands back: right, wrong (and why, in a student's words), or not answered yet.

A checker never raises on a wrong answer: it returns a :class:`Feedback`, which prints as one
short paragraph in a notebook. ``bool(feedback)`` is True only for a right answer, so a
teacher's script can ``assert check(...)``.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Feedback:
    """The verdict on one answer. ``ok`` is None while the exercise is not answered."""

    exercise: str  # "1.2 roofline time"
    ok: bool | None
    message: str

    def __bool__(self) -> bool:
        return self.ok is True

    @property
    def mark(self) -> str:
        return {True: "right", False: "not yet right", None: "not answered yet"}[self.ok]

    def __str__(self) -> str:
        return f"[{self.exercise}] {self.mark}: {self.message}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        color = {True: "#1a7f37", False: "#b35900", None: "#57606a"}[self.ok]
        return (f'<div style="border-left:4px solid {color};padding:2px 8px">'
                f"<b>{html.escape(self.exercise)}</b> &mdash; <span style=\"color:{color}\">"
                f"{self.mark}</span>: {html.escape(self.message)}</div>")


def right(exercise: str, message: str) -> Feedback:
    return Feedback(exercise, True, message)


def wrong(exercise: str, message: str) -> Feedback:
    return Feedback(exercise, False, message)


def unanswered(exercise: str, hint: str) -> Feedback:
    return Feedback(exercise, None, f"replace the ... with your answer. Hint: {hint}")


def is_unanswered(answer) -> bool:
    return answer is None or answer is Ellipsis


def number(answer) -> float | None:
    """The answer as a float, or None when it is not a number (a string, a list, a tensor of many)."""
    if isinstance(answer, bool):
        return None
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def close(a: float, b: float, rtol: float = 0.01) -> bool:
    """a and b agree within `rtol` of b (answers worked out by hand round a little)."""
    return abs(a - b) <= rtol * abs(b) + 1e-12


def fmt(x: float) -> str:
    """A number as a student would write it: 6,291,456 or 3.62 or 0.000123."""
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:.4g}"
