"""Publishing without waiting, and collecting every PubAck afterwards.

Inside ``broker.batch()`` each message is published with a reply subject
under one inbox of ours; JetStream answers each with a PubAck there.  One
subscription and a counter cost far less per message than nats.py's
``publish_async`` (a random token and a future each), and the batch knows
exactly which messages were stored.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from dramatiq.message import Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

#: Publishes awaiting their PubAck at once, per connection: past it, publishing waits.
MAX_UNANSWERED = 8192


@dataclass(eq=False)
class Pending:
    """A message published inside ``batch()`` and what became of it."""

    message: Message
    subject: str
    data: bytes
    headers: dict[str, str]
    batch: Batch
    stored: bool = False
    sent_at: float = 0.0


@dataclass(eq=False)
class Batch:
    items: list[Pending] = field(default_factory=list)
    unanswered: int = 0
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set with ``answered``, for a worker thread that waits for one publish without a task on the loop.
    answered_thread: threading.Event | None = None

    def answer(self) -> None:
        self.unanswered -= 1
        if self.unanswered == 0:
            self.answered.set()
            if self.answered_thread is not None:
                self.answered_thread.set()


class Publisher:
    def __init__(self, nc: NatsClient, reply_timeout: float) -> None:
        self.nc = nc
        self.reply_timeout = reply_timeout
        self.inbox = nc.new_inbox()
        self.sequence = 0
        self.waiting: dict[str, Pending] = {}
        self.room = asyncio.Semaphore(MAX_UNANSWERED)
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_reply)

    async def publish(self, pending: Pending) -> None:
        while self.room.locked():  # full: wait, but not for ever
            try:
                await asyncio.wait_for(self.room.acquire(), self.reply_timeout)
                self.room.release()
            except TimeoutError:
                self._expire()  # replies lost in a disconnect must not hold the room for ever
        await self.room.acquire()  # free now: returns at once
        self.sequence += 1
        token = str(self.sequence)
        pending.sent_at = time.monotonic()
        self.waiting[token] = pending
        pending.batch.unanswered += 1
        pending.batch.answered.clear()
        try:
            await self.nc.publish(pending.subject, pending.data, reply=f"{self.inbox}.{token}", headers=pending.headers)
        except Exception:  # not sent: settle re-publishes it
            self._answered(token, stored=False)

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        status = msg.headers.get("Status") if msg.headers else None
        # A status (no responders) or an API error in the PubAck: not stored.
        self._answered(token, stored=not status and b'"error"' not in msg.data)

    def _answered(self, token: str, stored: bool) -> None:
        pending = self.waiting.pop(token, None)
        if pending is None:
            return  # answered after its batch gave up on it
        self.room.release()
        pending.stored = stored
        pending.batch.answer()

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.reply_timeout
        for token, pending in list(self.waiting.items()):
            if pending.sent_at < cutoff:
                self._answered(token, stored=False)

    def abandon(self, batch: Batch) -> None:
        """Stop waiting for a batch's missing answers (they are re-published instead)."""
        for token, pending in list(self.waiting.items()):
            if pending.batch is batch:
                self._answered(token, stored=False)
