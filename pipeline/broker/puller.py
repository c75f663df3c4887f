"""Keep pull requests open for as many messages as a consumer has room for.

A fetch-per-batch consumer idles its worker threads for a round trip every
time its prefetch window drains.  Instead, the puller lives on the event
loop and, whenever acks free room, asks JetStream for that many more, so
messages are already waiting when a worker thread frees up.  It never asks
for more than ``prefetch - held`` (held: delivered and not yet settled).

Messages arrive on the stream's subject, whichever request they answer;
each request's end (a 408 status on its own reply subject when it expires)
carries ``Nats-Pending-Messages``, the part of it that went unfilled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header

logger = logging.getLogger(__name__)

#: Seconds a pull request waits on the server for messages.
PULL_EXPIRES = 5.0

#: Statuses that just end a pull request: no messages, request expired, heartbeat.
_ROUTINE_STATUSES = {"404", "408", "100"}


@dataclass
class _Request:
    remaining: int
    deadline: float


class Puller:
    """Pull requests for one consumer, accounted on the event loop thread only.

    JetStream serves a consumer's waiting pull requests in order, so each
    delivered message is counted against the oldest open request; a request
    that ends early (408 when it expires) is dropped with what it had left.
    After a reconnect a fresh inbox is used: whatever an old request still
    delivers to the old one is handed back (``nak``) at once, so the window
    is never exceeded and nothing waits for ``ack_wait``.
    """

    def __init__(
        self, nc: NatsClient, stream: str, consumer: str, prefetch: int, deliver: Callable[[Msg], None]
    ) -> None:
        self.nc = nc
        self.api_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.prefetch = prefetch
        self.deliver = deliver
        self.min_pull = max(1, prefetch // 2)
        self.held = 0
        self.requests: dict[str, _Request] = {}
        self.sequence = 0
        self.generation = 0
        self.inbox = ""
        #: No new pull requests: the consumer is handing its messages back.
        self.stopping = False
        self.closed = False
        #: Set when the server answered with an error: the consumer is restarted.
        self.broken: str | None = None
        self._subscriptions: list[Subscription] = []
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def asked(self) -> int:
        """Messages asked for and not yet delivered."""
        return sum(request.remaining for request in self.requests.values())

    async def start(self) -> None:
        await self._listen()
        self._watchdog = asyncio.create_task(self._watch())
        await self.pull()

    async def _listen(self) -> None:
        self.generation += 1
        self.inbox = self.nc.new_inbox()
        callback = partial(self._on_message, self.generation)
        self._subscriptions.append(await self.nc.subscribe(f"{self.inbox}.*", cb=callback))

    async def pull(self) -> None:
        if self.stopping or self.broken:
            return
        wanted = self.prefetch - self.held - self.asked
        if wanted < self.min_pull:
            # Let room build up: one request per several acks, not one per ack.  This
            # never stalls: less room than min_pull means held or asked messages will free it.
            return
        self.sequence += 1
        token = str(self.sequence)
        self.requests[token] = _Request(wanted, time.monotonic() + PULL_EXPIRES)
        request = {"batch": wanted, "expires": int(PULL_EXPIRES * 1e9)}
        await self.nc.publish(self.api_subject, json.dumps(request).encode(), reply=f"{self.inbox}.{token}")

    async def _on_message(self, generation: int, msg: Msg) -> None:
        current = generation == self.generation
        status = msg.headers.get("Status") if msg.headers else None
        if status:
            if current:
                await self._request_ended(msg, status)
            return
        if current:
            for token, request in self.requests.items():
                request.remaining -= 1
                if request.remaining <= 0:
                    del self.requests[token]
                break
        if not current or self.stopping:
            await msg.nak()  # an old request's delivery, or we are closing: back to the queue now
            return
        self.held += 1
        self.deliver(msg)

    async def _request_ended(self, msg: Msg, status: str) -> None:
        assert msg.headers is not None
        token = msg.subject.rsplit(".", 1)[-1]
        if status == "100":  # idle heartbeat: the request goes on
            return
        self.requests.pop(token, None)
        if status not in _ROUTINE_STATUSES:
            self.broken = f"{status} {msg.headers.get(Header.DESCRIPTION, '')}".strip()
            logger.warning("Pulling from %s failed: %s", self.api_subject, self.broken)
        await self.pull()

    async def settled(self, count: int = 1) -> None:
        """``count`` held messages were acked, dead-lettered or handed back."""
        self.held -= count
        await self.pull()

    async def reconnected(self) -> None:
        """The server may or may not still hold our requests: listen on a new inbox and ask again."""
        self.requests.clear()
        self.broken = None
        if self.closed:
            return
        await self._listen()
        await self.pull()

    async def _watch(self) -> None:
        """Drop requests the server never ended (a lost connection), retire old inboxes, top up."""
        while not self.closed:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for token, request in list(self.requests.items()):
                if request.deadline + 2.0 < now:
                    del self.requests[token]
            while len(self._subscriptions) > 1:  # requests on old inboxes have long expired
                with contextlib.suppress(Exception):
                    await self._subscriptions.pop(0).unsubscribe()
            with contextlib.suppress(Exception):
                await self.pull()

    async def stop(self, grace: float = 0.25) -> None:
        """Stop pulling; hand back what open requests still deliver, for up to ``grace`` seconds.

        A request the stream can fill is filled within milliseconds; one still
        open after that is waiting for new messages, and unsubscribing ends it.
        """
        self.stopping = True
        deadline = time.monotonic() + grace
        while self.requests and time.monotonic() < deadline and self.nc.is_connected:
            await asyncio.sleep(0.02)
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions.clear()
