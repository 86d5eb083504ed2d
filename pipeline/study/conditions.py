"""Conditions on a trial's scores: a study's constraints and export's ``--pick`` rule.

A condition is ``METRIC >= NUMBER`` or ``METRIC <= NUMBER`` on one of the scores a trial
records (a ``val/`` metric's mean over the objective's last evaluations, or a ``cost/`` metric).
Optuna counts a trial feasible when every constraint value is <= 0, so a condition's
``violation`` is how far the score is on the wrong side of its bound.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.config import check_choice
from pipeline.errors import ConfigError

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CONDITION = re.compile(rf"\s*(\S+)\s*(>=|<=)\s*({_NUMBER})\s*")
_PICK = re.compile(r"\s*(smallest|largest)\s+(\S+)(?:\s+with\s+(.+))?\s*")


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str  # ">=" or "<="
    bound: float
    text: str = field(default="", compare=False)  # as the user wrote it: the constraint's name

    def violation(self, value: float) -> float:
        return self.bound - value if self.op == ">=" else value - self.bound

    def holds(self, value: float) -> bool:
        return self.violation(value) <= 0

    def __str__(self) -> str:
        return self.text or f"{self.metric} {self.op} {self.bound:g}"


def parse_condition(text: str, allowed: Sequence[str], *, where: str) -> Condition:
    match = _CONDITION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"{where}: got {text!r}, expected 'METRIC >= NUMBER' or "
                          f"'METRIC <= NUMBER', e.g. 'val/high_quality >= 0.9'")
    metric, op, bound = match.groups()
    check_metric(metric, allowed, where=where)
    if not math.isfinite(float(bound)):
        raise ConfigError(f"{where}: got {text!r}, expected a finite bound")
    return Condition(metric, op, float(bound), f"{metric} {op} {bound}")


def check_metric(metric: str, allowed: Sequence[str], *, where: str) -> str:
    check_choice(where, metric, allowed)
    return metric


@dataclass(frozen=True)
class Pick:
    """``smallest|largest METRIC [with CONDITION [and CONDITION]...]``: the trial a user chooses
    from a multi-objective study's trade-offs, e.g. the smallest generator that is good enough."""

    metric: str
    largest: bool
    conditions: tuple[Condition, ...]

    def choose(self, scores: Mapping[int, Mapping[str, float]]) -> int | None:
        """The trial number (a key of ``scores``) that the rule picks, None if none qualifies.
        Ties go to the lower trial number, so the answer is repeatable."""
        ok = [(n, s[self.metric]) for n, s in sorted(scores.items())
              if self.metric in s and all(c.metric in s and c.holds(s[c.metric])
                                          for c in self.conditions)]
        if not ok:
            return None
        sign = -1.0 if self.largest else 1.0
        return min(ok, key=lambda item: sign * item[1])[0]

    def __str__(self) -> str:
        rule = f"{'largest' if self.largest else 'smallest'} {self.metric}"
        return rule + (" with " + " and ".join(map(str, self.conditions))
                       if self.conditions else "")


def parse_pick(text: str, allowed: Sequence[str]) -> Pick:
    match = _PICK.fullmatch(text)
    if match is None:
        raise ConfigError(f"--pick: got {text!r}, expected 'smallest|largest METRIC [with "
                          f"METRIC >= NUMBER [and ...]]', e.g. 'smallest cost/g_params with "
                          f"val/pacgan_score >= 0.95'")
    which, metric, rest = match.groups()
    check_metric(metric, allowed, where="--pick")
    conditions = tuple(parse_condition(part, allowed, where="--pick")
                       for part in re.split(r"\s+and\s+", rest.strip())) if rest else ()
    return Pick(metric, which == "largest", conditions)
