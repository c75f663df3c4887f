"""Every name of the pipeline: stages, queues, event subjects, streams, consumers.  A public contract.

KEDA's ``nats-jetstream`` scaler, the Grafana dashboards, the lag exporter
and producers in any language address the pipeline by these names, so they
are derived in one place and imported (never retyped) wherever they are
needed.  This module imports nothing heavy: a command that only needs a
name loads no SDK.

For a queue ``fetch`` and the default prefix ``pipeline``:

=====================  ==================================
stream                 ``pipeline_fetch``
subject                ``pipeline.q.fetch``
delayed subjects       ``pipeline.q.fetch.delayed.<id>``
durable consumer       ``workers``
dead-letter stream     ``pipeline_dead``
dead-letter subject    ``pipeline.dead.fetch``
=====================  ==================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "pipeline"
CONSUMER_NAME = "workers"

#: The stages, in flow order; each is a Dramatiq queue of the same name.  A page is got by ``fetch``
#: (HTTP) or ``render`` (headless Chromium, for pages written by JavaScript); both hand it to ``scrape``.
STAGES = ("fetch", "render", "scrape", "analyse", "alert")
#: The kinds of event producers publish, each on ``<prefix>.events.<kind>``.
EVENT_KINDS = ("check", "monitor", "content")
#: The exported gauge of each queue's lag: KEDA's Prometheus trigger and the dashboards query it.
LAG_METRIC = "pipeline_queue_lag"
#: The dead letters of the ingest (events it could not turn into jobs) are filed under this queue name.
EVENTS_QUEUE = "events"

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+$")


def check_prefix(prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise ValueError(f"invalid name prefix {prefix!r}: use letters, digits, '_' and '-'")
    return prefix


@dataclass(frozen=True)
class QueueNames:
    """Every NATS name that belongs to one Dramatiq queue."""

    prefix: str
    queue: str

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        if not _QUEUE_NAME.match(self.queue):
            raise ValueError(f"invalid queue name {self.queue!r}: JetStream queues take letters, digits, '_' and '-'")

    @property
    def stream(self) -> str:
        return f"{self.prefix}_{self.queue}"

    @property
    def subject(self) -> str:
        return f"{self.prefix}.q.{self.queue}"

    @property
    def delayed_wildcard(self) -> str:
        return f"{self.subject}.delayed.*"

    def delayed_subject(self, key: str) -> str:
        return f"{self.subject}.delayed.{key}"

    @property
    def consumer(self) -> str:
        return CONSUMER_NAME

    @property
    def dead_subject(self) -> str:
        return f"{self.prefix}.dead.{self.queue}"


def dead_stream(prefix: str) -> str:
    return f"{check_prefix(prefix)}_dead"


def dead_wildcard(prefix: str) -> str:
    return f"{check_prefix(prefix)}.dead.>"


def event_subject(kind: str, prefix: str = DEFAULT_PREFIX) -> str:
    """``pipeline.events.check``: where producers publish events of ``kind``."""
    return f"{check_prefix(prefix)}.events.{kind}"


def events_stream(prefix: str = DEFAULT_PREFIX) -> str:
    """``<prefix>-events``: a hyphen, so no Dramatiq queue's stream (``<prefix>_<queue>``) can take the name."""
    return f"{check_prefix(prefix)}-events"
