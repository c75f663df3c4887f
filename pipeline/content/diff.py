"""Line diffs between two snapshots' normalised texts."""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Change:
    """What scrape found: the text before (None on a first check), after, and the line diff."""

    before: str | None
    after: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


def diff(before: str | None, after: str) -> Change:
    """Lines added and removed between two normalised texts (all of ``after`` on a first check)."""
    if before is None:
        return Change(None, after, tuple(after.splitlines()), ())
    added, removed = [], []
    for line in difflib.ndiff(before.splitlines(), after.splitlines()):
        if line.startswith("+ "):
            added.append(line[2:])
        elif line.startswith("- "):
            removed.append(line[2:])
    return Change(before, after, tuple(added), tuple(removed))
