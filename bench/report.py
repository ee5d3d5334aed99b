"""What a benchmark case reports: figures, each against the baseline measured in the same run.

A ``Figure`` is one measured value with the baseline it is compared to and their ratio; a
target, when the case has one, is checked against the ratio or the value and reported as
met or missed, never hidden. ``render_table`` prints the run, ``to_json`` is what
``bench/results/latest.json`` holds.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Baseline", "CaseResult", "Figure", "Target", "render_table", "to_json"]

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}


@dataclass(frozen=True, slots=True)
class Baseline:
    """What a figure is compared to; ``measured`` is False only for a stated model."""

    name: str
    value: float
    measured: bool = True


@dataclass(frozen=True, slots=True)
class Target:
    """A goal on the figure's ``ratio`` or its ``value``: ``ratio >= 5``, ``value < 150``."""

    on: Literal["ratio", "value"]
    op: Literal[">=", ">", "<=", "<"]
    threshold: float

    def met(self, figure: Figure) -> bool | None:
        observed = figure.ratio if self.on == "ratio" else figure.value
        if observed is None or math.isnan(observed):
            return None
        return _COMPARE[self.op](observed, self.threshold)

    def describe(self, unit: str) -> str:
        if self.on == "ratio":
            return f"{self.op} {self.threshold:g}x"
        return f"{self.op} {self.threshold:g} {unit}"


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured value, its baseline and ``ratio = value / baseline.value``."""

    name: str
    value: float
    unit: str
    baseline: Baseline | None = None
    target: Target | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline.value == 0:
            return None
        return self.value / self.baseline.value

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": _finite(self.value),
            "unit": self.unit,
            "baseline": None if self.baseline is None else asdict(self.baseline),
            "ratio": _finite(self.ratio),
            "target": None if self.target is None else self.target.describe(self.unit),
            "target_rule": None if self.target is None else asdict(self.target),
            "met": self.met,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Figure:
        baseline, rule = data.get("baseline"), data.get("target_rule")
        return cls(
            name=data["name"],
            value=float(data["value"]) if data["value"] is not None else math.nan,
            unit=data["unit"],
            baseline=None if baseline is None else Baseline(**baseline),
            target=None if rule is None else Target(**rule),
            note=data.get("note", ""),
        )


@dataclass(slots=True)
class CaseResult:
    """Everything one case measured, plus what the reader needs to know about how."""

    case: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "title": self.title,
            "seconds": round(self.seconds, 1),
            "error": self.error,
            "notes": self.notes,
            "figures": [f.as_dict() for f in self.figures],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        return cls(
            case=data["case"],
            title=data["title"],
            figures=[Figure.from_dict(f) for f in data["figures"]],
            notes=list(data["notes"]),
            seconds=float(data["seconds"]),
            error=data.get("error"),
        )


def _finite(value: float | None) -> float | None:
    """JSON has no NaN: a figure that could not be measured is null."""
    return None if value is None or math.isnan(value) else value


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _ratio(figure: Figure) -> str:
    """Two decimals, or four where two would round a missed target onto its threshold."""
    assert figure.ratio is not None
    shown = f"{figure.ratio:.2f}"
    target = figure.target
    missed = target is not None and target.on == "ratio" and figure.met is False
    if missed and target is not None and float(shown) == target.threshold:
        shown = f"{figure.ratio:.4f}"
    return shown + "x"


def _row(figure: Figure) -> list[str]:
    baseline = "-"
    if figure.baseline is not None:
        kind = "" if figure.baseline.measured else " (model)"
        baseline = f"{_number(figure.baseline.value)} {figure.baseline.name}{kind}"
    ratio = "-" if figure.ratio is None else _ratio(figure)
    target = "-" if figure.target is None else figure.target.describe(figure.unit)
    met = {None: "", True: "met", False: "MISSED"}[figure.met]
    value = f"{_number(figure.value)} {figure.unit}"
    return [figure.name, value, baseline, ratio, target, met, figure.note]


def render_table(results: Sequence[CaseResult]) -> str:
    """The run as a plain-text table, one block per case, notes under it."""
    header = ["figure", "value", "baseline (same run)", "ratio", "target", "", "note"]
    lines: list[str] = []
    for result in results:
        rows = [_row(f) for f in result.figures]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines.append(f"== {result.case}: {result.title} ({result.seconds:.0f} s)")
        if result.error:
            lines.append(f"   FAILED: {result.error}")
        lines.append("   " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        lines.extend(
            "   " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        )
        lines.extend(f"   - {note}" for note in result.notes)
        lines.append("")
    return "\n".join(lines)


def to_json(results: Sequence[CaseResult], **run: Any) -> dict[str, Any]:
    return {**run, "cases": [r.as_dict() for r in results]}
