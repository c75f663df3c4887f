"""CPU time and memory of a process and all its descendants, from Linux's /proc (no dependency).

A process's ``cutime``/``cstime`` hold the CPU of the children it has waited
for, so a worker that exited during a round still counts, and a live child is
counted once, on its own.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # exited meanwhile
        return None
    return text[text.rindex(")") + 2 :].split()  # the name, in parentheses, may hold spaces


def tree(root: int) -> list[int]:
    """``root`` and every process under it, alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(root: int) -> float:
    """User and system CPU seconds of ``root``'s tree, waited-for children included."""
    ticks = 0
    for pid in tree(root):
        fields = _stat(pid)
        if fields is not None:  # utime, stime, cutime, cstime: fields 14-17 of stat(5), 12-15 after the name
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / _TICK


def peak_rss_mb(root: int) -> float:
    """Resident memory of ``root``'s tree now, in MB (shared pages counted in each process)."""
    pages = 0
    for pid in tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError):  # exited meanwhile
            pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * _PAGE / 1e6


def _kind(pid: int) -> str:
    """What a process is, for a breakdown: its stage (``--queues``), or its program's name."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    if "--queues" in words:
        return "worker " + words[words.index("--queues") + 1]
    names = [Path(w).name for w in words[:3]]
    return " ".join(n for n in names if not n.startswith("python")) or "python"


def cpu_by_kind(root: int) -> dict[str, float]:
    """CPU seconds of ``root``'s tree by kind of process (waited-for children count with their parent)."""
    seconds: dict[str, float] = {}
    for pid in tree(root):
        fields = _stat(pid)
        if fields is not None:
            kind = _kind(pid)
            seconds[kind] = seconds.get(kind, 0.0) + sum(int(v) for v in fields[11:15]) / _TICK
    return seconds
