"""The offline analyser: rules that decide whether a change matters.

A monitor's ``rule`` is one line, checked when the monitor is saved:

==========================  ===============================================
``changed`` (or no rule)    any change matters
``"sold out"``              the phrase appears in what was added (any case)
``/back in stock/i``        the regular expression matches what was added
``price < 100``             the first number in the watched text is below
                            100 (``<``, ``<=``, ``>``, ``>=``, ``==``, ``!=``);
                            the name on the left is only a label; numbers
                            are read as ``pipeline.content.numbers`` says
==========================  ===============================================

Rules run on normalised text, never on markup, and need no network.  Regular
expressions run on the ``regex`` module (Python's syntax) with a time limit,
so a pattern that backtracks catastrophically fails its check as a bad rule
instead of holding a worker.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import regex

from pipeline.content.diff import Change
from pipeline.content.numbers import first_number, format_number

Severity = Literal["info", "warning", "critical"]


class RuleError(ValueError):
    """A rule that cannot be understood; the message shows what would be."""


@dataclass(frozen=True)
class Verdict:
    relevant: bool
    severity: Severity
    summary: str
    evidence: tuple[str, ...] = field(default_factory=tuple)


_COMPARISON = re.compile(r"^\s*([A-Za-z_][\w ]*?)\s*(<=|>=|==|!=|<|>)\s*(-?\d[\d.,]*)\s*$")
_DECIMAL = re.compile(r"-?\d+(\.\d+)?")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
#: How long one rule's regular expression may run on one change (the ``regex`` module's timeout).
MATCH_SECONDS = 1.0
_EXAMPLES = 'changed | "sold out" | /back in stock/i | price < 100'


def _added_text(change: Change) -> str:
    return "\n".join(change.added) if change.before is not None else change.after


@dataclass(frozen=True)
class AnyChange:
    def evaluate(self, change: Change) -> Verdict:
        if change.before == change.after or not (change.added or change.removed):
            return Verdict(False, "info", "unchanged")
        lines = change.added[:5] or change.removed[:5]
        return Verdict(True, "info", f"{len(change.added)} line(s) added, {len(change.removed)} removed", lines)


@dataclass(frozen=True)
class Pattern:
    regex: regex.Pattern[str]
    label: str

    def evaluate(self, change: Change) -> Verdict:
        """Raises ``RuleError`` when the expression takes longer than ``MATCH_SECONDS`` on this text."""
        try:  # a user's expression can backtrack for hours: bounded, and other threads run meanwhile
            matches = self.regex.finditer(_added_text(change), timeout=MATCH_SECONDS, concurrent=True)
            found = [m.group() for _, m in zip(range(5), matches, strict=False)]
        except TimeoutError:
            raise RuleError(
                f"rule {self.label} took over {MATCH_SECONDS:g}s on this text (catastrophic backtracking?): simplify it"
            ) from None
        if not found:
            return Verdict(False, "info", f"{self.label} not in what changed")
        return Verdict(True, "warning", f"{self.label} appeared", tuple(found))


@dataclass(frozen=True)
class Threshold:
    label: str
    op: str
    limit: float

    def evaluate(self, change: Change) -> Verdict:
        now = first_number(change.after)
        if now is None:
            return Verdict(False, "info", f"no number found for {self.label}")
        was = first_number(change.before) if change.before is not None else None
        holds = _OPERATORS[self.op](now, self.limit)
        shown = format_number(now)
        if not holds or now == was:
            return Verdict(False, "info", f"{self.label} is {shown}")
        history = f" (was {format_number(was)})" if was is not None else ""
        summary = f"{self.label} is {shown}{history}, {self.op} {format_number(self.limit)}"
        return Verdict(True, "warning", summary, (shown,))


Rule = AnyChange | Pattern | Threshold


@functools.lru_cache(maxsize=1024)
def parse_rule(text: str | None) -> Rule:
    """The rule ``text`` says (a frozen value, so one parse serves every event with the same text);
    raises ``RuleError`` with the reason and examples."""
    text = (text or "").strip()
    if text in ("", "changed"):
        return AnyChange()
    if text.startswith("/"):
        body, slash, flags = text[1:].rpartition("/")
        if not slash or set(flags) - {"i", "m", "s"}:
            raise RuleError(f"regular expression rule must look like /pattern/flags (flags: i m s), got {text!r}")
        bits = {"i": regex.IGNORECASE, "m": regex.MULTILINE, "s": regex.DOTALL}
        try:
            compiled = regex.compile(body, sum(bits[f] for f in set(flags)))
        except regex.error as e:
            raise RuleError(f"invalid regular expression {body!r}: {e}") from None
        return Pattern(compiled, f"/{body}/{''.join(sorted(set(flags)))}")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        phrase = text[1:-1]
        if not phrase.strip():
            raise RuleError("empty phrase")
        return Pattern(regex.compile(regex.escape(phrase), regex.IGNORECASE), f'"{phrase}"')
    match = _COMPARISON.match(text)
    if match:
        label, op, limit = match.groups()
        # A rule is written as code is: 89.500 is 89.5. Only a limit with a comma or several points
        # (1,299 or 1.299.000) is read as shops write numbers, as the watched text is.
        number = float(limit) if _DECIMAL.fullmatch(limit) else first_number(limit)
        if number is None or not math.isfinite(number):
            raise RuleError(f"cannot read {limit!r} as a number in rule {text!r}")
        return Threshold(label.strip(), op, number)
    raise RuleError(f"cannot understand rule {text!r}; examples: {_EXAMPLES}")
