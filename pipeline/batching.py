"""Several checks to a message: how many, and how big.

A message per check cost more than most checks' own work: Dramatiq's handling, NATS storing,
delivering and acknowledging it, and a commit each.  So where checks travel together (the
events one pull of the ingest brings, and what a batch hands on to the next stage) they go up to
``MAX_CHECKS`` to a message, each message under the payload NATS takes.  A check of a batch that
fails goes on alone, as its stage's own message (``actors.batches``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

#: The most checks one message carries.
MAX_CHECKS = 16
#: The largest message: NATS' default max payload, less room for headers (bytes).
MAX_BYTES = 1024 * 1024 - 8192


def groups(items: list[T], size: Callable[[T], int]) -> Iterator[list[T]]:
    """``items`` in order, in groups of up to ``MAX_CHECKS`` whose ``size`` (bytes) adds up to at most
    ``MAX_BYTES``; an item over ``MAX_BYTES`` alone is a group of its own (the caller refuses it)."""
    group: list[T] = []
    total = 0
    for item in items:
        bytes_ = size(item)
        if group and (len(group) == MAX_CHECKS or total + bytes_ > MAX_BYTES):
            yield group
            group, total = [], 0
        group.append(item)
        total += bytes_
    if group:
        yield group
