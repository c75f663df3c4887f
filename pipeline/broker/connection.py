"""One NATS connection, as a broker and its consumers share it.

nats.py is asyncio; Dramatiq's workers are threads.  The connection owns an
event loop in a thread of its own (``EventLoopThread``), the client and its
JetStream context, and the outbox through which worker threads settle
messages without waiting for the loop: acks leave in bursts, as AMQP's
``basic_ack`` does in Dramatiq's RabbitMQ broker.  Messages delivered and
not yet settled are *in flight*, kept alive by ``in_progress`` heartbeats
so a long task is not redelivered to a second worker.

The broker (``broker.py``) keeps Dramatiq's API and the streams; the
consumers (``consumer.py``) settle their own messages here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

import nats
import nats.errors
import nats.js.errors
from dramatiq.errors import ConnectionClosed, ConnectionFailed
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from pipeline.broker.loop import EventLoopThread
from pipeline.broker.outbox import Outbox
from pipeline.broker.publisher import Publisher
from pipeline.broker.puller import Puller

#: Seconds a first connection may take before ``ConnectionFailed``.
INITIAL_CONNECT_DEADLINE = 15.0

#: Errors that mean "the server is not reachable right now".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,  # nats.errors.TimeoutError and asyncio's are this one
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    ConnectionError,
)


class Connection:
    """A NATS connection made on first use: the loop thread, the client, the outbox, the in-flight set.

    Parameters:
      url: NATS server URL(s), comma-separated; None starts the embedded server under ``home``.
      name: the client's name, as the server lists it.
      connect_options: passed to ``nats.connect`` (credentials, TLS, ...).
      connect_timeout: seconds the first connection may take.
      ack_wait: the consumers' ack wait; heartbeats go out three times per period.
      publish_timeout: seconds a publish's reply may take.
    """

    def __init__(
        self,
        url: str | None,
        *,
        home: str | os.PathLike[str],
        name: str,
        connect_options: dict[str, Any],
        connect_timeout: float = INITIAL_CONNECT_DEADLINE,
        ack_wait: float = 30.0,
        publish_timeout: float = 30.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.url = url
        self.home = home
        self.name = name
        self.connect_options = connect_options
        self.connect_timeout = connect_timeout
        self.ack_wait = ack_wait
        self.publish_timeout = publish_timeout
        self.logger = logger or logging.getLogger(__name__)
        #: Messages delivered to this process and not yet settled.
        self.inflight: dict[int, Msg] = {}
        #: The pull requests of this process's consumers, renewed after a reconnect.
        self.pullers: set[Puller] = set()
        self.schedules = True  # the server schedules messages itself (nats-server >= 2.12)
        self._lock = threading.RLock()
        self._loop: EventLoopThread | None = None
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._outbox: Outbox | None = None
        self.batch_outbox: Outbox | None = None
        self.publisher: Publisher | None = None
        self._heartbeat: Future[None] | None = None

    @property
    def loop(self) -> EventLoopThread:
        self.connect()
        assert self._loop is not None
        return self._loop

    @property
    def js(self) -> JetStreamContext:
        self.connect()
        assert self._js is not None
        return self._js

    @property
    def nc(self) -> NatsClient:
        self.connect()
        assert self._nc is not None
        return self._nc

    @property
    def connected_js(self) -> JetStreamContext | None:
        """The JetStream context when connected, without connecting (for coroutines on the loop)."""
        return self._js

    @property
    def safe_url(self) -> str:
        """The URL with any credentials in it masked, for messages and logs."""
        servers = []
        for server in (self.url or "").split(","):
            scheme, sep, rest = server.partition("://")
            if "@" in rest:
                rest = "***@" + rest.rsplit("@", 1)[1]
            servers.append(scheme + sep + rest)
        return ",".join(servers)

    def connect(self) -> None:
        """Connect now if not yet connected; ``ConnectionFailed`` with the masked URL and why."""
        if self._js is not None:
            return
        with self._lock:
            if self._js is not None:
                return
            if self.url is None:
                from pipeline.nats_server import embedded_url

                self.url = embedded_url(self.home)
            if self._loop is None:
                self._loop = EventLoopThread()
            try:
                nc = self._loop.run(self._open())
            except Exception as e:
                raise ConnectionFailed(f"cannot reach NATS at {self.safe_url}: {_reason(e)}") from None
            self._nc = nc
            self.schedules = _server_version(nc) >= (2, 12)
            self._outbox = Outbox(self._loop.loop)
            self.batch_outbox = Outbox(self._loop.loop)  # batch publishes never hold up acks
            self.publisher = Publisher(nc, reply_timeout=self.publish_timeout)
            self._loop.run(self.publisher.start())
            self._heartbeat = self._loop.spawn(self._heartbeats())
            self._js = nc.jetstream(timeout=5)  # last: other threads take it to mean "ready"

    async def _open(self) -> NatsClient:
        """Connect, giving up after ``connect_timeout`` (or at once when refused).

        nats.py retries a first connection as long as it retries a lost one
        (forever, here), so a wrong password would hang a worker silently.
        """
        first_errors: list[Exception] = []
        refused = asyncio.Event()
        away: list[float] = []  # when the connection was lost, while it is

        async def on_error(e: Exception) -> None:
            if self._nc is None:  # still connecting for the first time
                first_errors.append(e)
                if "authoriz" in str(e).lower() or "authentication" in str(e).lower():
                    refused.set()
                return
            # Reconnecting fails twice a second while a server is away: the first failure says it, once.
            self.logger.log(logging.DEBUG if away else logging.WARNING, "NATS error: %s", e)

        async def on_disconnect() -> None:
            if self._nc is not None and not away:  # not our own close(), and not already said
                away.append(time.monotonic())
                self.logger.warning("Disconnected from NATS; reconnecting.")

        async def on_reconnect() -> None:
            lasted = f" after {time.monotonic() - away.pop():.0f} s" if away else ""
            self.logger.info("Reconnected to NATS%s.", lasted)
            for puller in list(self.pullers):
                await puller.reconnected()

        options = {k: v for k, v in self.connect_options.items() if v is not None}
        options.setdefault("name", self.name)
        options.setdefault("max_reconnect_attempts", -1)
        options.setdefault("reconnect_time_wait", 0.5)
        options.setdefault("connect_timeout", 5)
        connecting = asyncio.ensure_future(
            nats.connect(
                servers=[s.strip() for s in (self.url or "").split(",")],
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                **options,
            )
        )
        waiting = asyncio.ensure_future(refused.wait())
        await asyncio.wait({connecting, waiting}, timeout=self.connect_timeout, return_when="FIRST_COMPLETED")
        waiting.cancel()
        if connecting.done():
            return connecting.result()
        connecting.cancel()
        raise ConnectionError(str(first_errors[-1]) if first_errors else "timed out")

    async def _heartbeats(self) -> None:
        """Tell JetStream that every in-flight message is still being worked on."""
        interval = max(self.ack_wait / 3, 0.1)
        while True:
            await asyncio.sleep(interval)
            nc = self._nc
            if nc is None or not nc.is_connected:
                continue
            for msg in list(self.inflight.values()):
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    def close(self) -> None:
        """Send what the outbox holds, close the client and stop the loop thread (idempotent)."""
        with self._lock:
            loop, nc = self._loop, self._nc
            self._loop = self._nc = self._js = None
        if loop is None:
            return
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if nc is not None:
            with contextlib.suppress(Exception):
                if self._outbox is not None:
                    loop.run(self._outbox.flushed(), timeout=5)  # queued acks leave first
                loop.run(nc.close(), timeout=10)
        loop.stop()
        for outbox in (self._outbox, self.batch_outbox):
            if outbox is not None:
                outbox.close()

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a nats.py coroutine on the loop, mapping disconnects to ``ConnectionClosed``."""
        try:
            return self.loop.run(coro, timeout)
        except TRANSIENT_ERRORS as e:
            raise ConnectionClosed(e) from None

    # -- settling, from worker threads, without waiting for the loop -----

    def ack(self, msg: Msg, puller: Puller) -> None:
        """Acknowledge a message; its puller may then ask for another."""
        self.inflight.pop(id(msg), None)

        async def ack() -> None:
            try:
                await msg.ack()
            finally:
                await puller.settled()

        self._queue(ack)

    def nak(self, msg: Msg, puller: Puller, delay: float | None = None) -> None:
        """Hand a message back for redelivery (after ``delay`` seconds)."""
        self.inflight.pop(id(msg), None)

        async def nak() -> None:
            try:
                await msg.nak(delay=delay)
            finally:
                await puller.settled()

        self._queue(nak)

    def settled(self, msg: Msg, puller: Puller) -> None:
        """A delivered message was dealt with another way (dead-lettered, terminated)."""
        self.inflight.pop(id(msg), None)
        self._queue(puller.settled)

    def _queue(self, job: Callable[[], Awaitable[object]]) -> None:
        nc, outbox = self._nc, self._outbox
        if nc is None or nc.is_closed or outbox is None:
            raise ConnectionClosed("the NATS connection is closed")
        outbox.put(job)


def _server_version(nc: NatsClient) -> tuple[int, int]:
    version = nc.connected_server_version
    return (version.major, version.minor)


def _reason(error: BaseException) -> str:
    """``[Errno 111] Connection refused`` -> ``connection refused``: the why, in the words of one line."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(error).strip()) or type(error).__name__
    return text[:1].lower() + text[1:]
