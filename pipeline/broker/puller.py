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
    batch: int
    deadline: float


class Puller:
    def __init__(
        self, nc: NatsClient, stream: str, consumer: str, prefetch: int, deliver: Callable[[Msg], None]
    ) -> None:
        self.nc = nc
        self.api_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.prefetch = prefetch
        self.deliver = deliver
        self.min_pull = max(1, prefetch // 2)
        self.held = 0
        #: Messages asked for and neither delivered nor released by a request's end.
        self.asked = 0
        self.requests: dict[str, _Request] = {}
        self.inbox = nc.new_inbox()
        self.sequence = 0
        self.closed = False
        #: Set when the server answered with an error: the consumer is restarted.
        self.broken: str | None = None
        self._subscription: Subscription | None = None
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_message)
        self._watchdog = asyncio.create_task(self._watch())
        await self.pull()

    async def pull(self) -> None:
        if self.closed or self.broken:
            return
        wanted = self.prefetch - self.held - self.asked
        if wanted <= 0 or (wanted < self.min_pull and self.requests):
            return  # let room build up: one request per few acks, not one per ack
        self.sequence += 1
        token = str(self.sequence)
        self.requests[token] = _Request(wanted, time.monotonic() + PULL_EXPIRES)
        self.asked += wanted
        request = {"batch": wanted, "expires": int(PULL_EXPIRES * 1e9)}
        await self.nc.publish(self.api_subject, json.dumps(request).encode(), reply=f"{self.inbox}.{token}")

    async def _on_message(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status:
            await self._request_ended(msg, status)
            return
        self.asked = max(0, self.asked - 1)
        if self.closed:
            await msg.nak()
            return
        self.held += 1
        self.deliver(msg)

    async def _request_ended(self, msg: Msg, status: str) -> None:
        assert msg.headers is not None
        request = self.requests.pop(msg.subject.rsplit(".", 1)[-1], None)
        if status == "100":  # idle heartbeat: the request goes on
            if request is not None:
                self.requests[msg.subject.rsplit(".", 1)[-1]] = request
            return
        unfilled = msg.headers.get("Nats-Pending-Messages")
        if unfilled is not None:
            self.asked = max(0, self.asked - int(unfilled))
        elif request is not None:
            self.asked = max(0, self.asked - request.batch)
        if not self.requests:
            self.asked = 0
        if status not in _ROUTINE_STATUSES:
            self.broken = f"{status} {msg.headers.get(Header.DESCRIPTION, '')}".strip()
            logger.warning("Pulling from %s failed: %s", self.api_subject, self.broken)
        await self.pull()

    async def settled(self, count: int = 1) -> None:
        """``count`` held messages were acked, dead-lettered or handed back."""
        self.held -= count
        await self.pull()

    def forget_requests(self) -> None:
        """After a reconnect the server may have lost our requests: ask again."""
        self.requests.clear()
        self.asked = 0
        self.broken = None

    async def _watch(self) -> None:
        """Drop requests the server never ended (a lost connection) and top up."""
        while not self.closed:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for token, request in list(self.requests.items()):
                if request.deadline + 2.0 < now:
                    del self.requests[token]
            if not self.requests:
                self.asked = 0
            with contextlib.suppress(Exception):
                await self.pull()

    async def stop(self) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
