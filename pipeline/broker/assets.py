"""The pipeline's JetStream assets, declared at one replication setting, and a report of where they are.

Every stream (queues, dead letters, events), KV bucket (rate limits,
politeness, verdicts) and the object store (bodies) is declared here with
the broker's ``replicas`` and ``storage`` (``PIPELINE_NATS_REPLICAS``,
``PIPELINE_NATS_STORAGE``).  A KV bucket or object store is a stream
underneath (``KV_<bucket>``, ``OBJ_<bucket>``); one that already exists
with other replicas is updated to the setting, as JetStream allows for
replicas (not for storage, which it refuses to change: that error is
raised as it is).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, KeyValueConfig, ObjectStoreConfig, StreamConfig, StreamInfo
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

T = TypeVar("T")

#: Seconds a stream whose replicas changed is given to elect a leader.
SETTLE_SECONDS = 15.0

#: JetStream's error code for "stream name already in use with a different configuration".
STREAM_NAME_IN_USE = 10058
#: JetStream's error code for "no suitable peers for placement": too few servers up for the replicas asked
#: for, as while a cluster is forming or a server restarts.
NO_SUITABLE_PEERS = 10005


async def add_or_update_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one to ``config`` (replicas, limits, subjects)."""

    async def declare() -> None:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as e:
            if e.err_code != STREAM_NAME_IN_USE:
                raise
            await js.update_stream(config)

    await patiently(declare)
    await _settled(js, config.name or "")


async def add_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """Create (or confirm) a durable consumer; on a cluster its own leader is elected meanwhile."""
    await patiently(lambda: js.add_consumer(stream, config))


async def patiently(call: Callable[[], Awaitable[T]], timeout: float = SETTLE_SECONDS) -> T:
    """Run a JetStream API call again while it times out, finds nobody to answer (a busy meta leader,
    an election) or too few servers for its replicas (one restarting), for up to ``timeout`` seconds;
    what it says otherwise is raised at once."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await call()
        except (TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
            if asyncio.get_running_loop().time() > deadline:
                raise
        except nats.js.errors.BadRequestError as e:
            if e.err_code != NO_SUITABLE_PEERS or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.25)


async def key_value(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Bind the bucket, creating it if absent; its replicas follow ``config.replicas``."""
    bind, create = (lambda: js.key_value(config.bucket)), (lambda: js.create_key_value(config))
    return await _bucket(js, bind, create, f"KV_{config.bucket}", config.replicas)


async def object_store(js: JetStreamContext, bucket: str, config: ObjectStoreConfig) -> ObjectStore:
    """Bind the object store, creating it if absent; its replicas follow ``config.replicas``."""
    bind, create = (lambda: js.object_store(bucket)), (lambda: js.create_object_store(bucket, config=config))
    return await _bucket(js, bind, create, f"OBJ_{bucket}", config.replicas)


async def _bucket(
    js: JetStreamContext,
    bind: Callable[[], Awaitable[T]],
    create: Callable[[], Awaitable[T]],
    stream: str,
    replicas: int,
) -> T:
    """A KV bucket or object store (``stream`` underneath): bound if it exists, its replicas brought to
    ``replicas``; else created, and used once its stream has a leader."""
    try:
        found = await bind()
    except nats.js.errors.BucketNotFoundError:
        made = await patiently(create)
        await _settled(js, stream)
        return made
    await _keep_replicas(js, stream, replicas)
    return found


async def _keep_replicas(js: JetStreamContext, stream: str, replicas: int) -> None:
    info = await js.stream_info(stream)
    if info.config.num_replicas != replicas:
        info.config.num_replicas = replicas
        await js.update_stream(info.config)
        await _settled(js, stream)


async def _settled(js: JetStreamContext, stream: str, timeout: float = SETTLE_SECONDS) -> None:
    """Wait until a new or changed stream has a leader (or ``timeout``).

    On a cluster, a stream just created or whose replicas changed is briefly without a leader: the
    first writes would otherwise get no answer.  New replicas catch up in the background.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(nats.errors.Error, TimeoutError):  # no leader may mean no answer at all
            cluster = (await asyncio.wait_for(js.stream_info(stream), 0.5)).cluster
            if cluster is None or cluster.leader:
                return
        await asyncio.sleep(0.1)


@dataclass(frozen=True)
class Asset:
    """One stream as ``pipeline status`` shows it: ``kind`` is stream, kv or objects."""

    name: str
    kind: str
    replicas: int
    storage: str
    leader: str | None  # the server that leads it; None while it has no leader (an election)
    current: int  # replicas caught up with the leader, the leader included


def owned_by(prefix: str, stream: str) -> bool:
    """Whether ``stream`` is one of the pipeline's with this prefix (queues, dead letters, events, buckets)."""
    for head in ("", "KV_", "OBJ_"):
        if stream.startswith(f"{head}{prefix}_") or stream == f"{head}{prefix}-events":
            return True
    return False


async def stream_names(nc: NatsClient, timeout: float = 5.0) -> list[str]:
    """Every stream's name, page by page.

    JetStream's names API, answered from the meta leader's assignments: complete even while streams
    move, where the list of stream infos leaves out those that did not answer in time.
    """
    names: list[str] = []
    while True:
        reply = await nc.request("$JS.API.STREAM.NAMES", json.dumps({"offset": len(names)}).encode(), timeout)
        page = json.loads(reply.data)
        if "error" in page:
            raise nats.js.errors.APIError.from_error(page["error"])
        names.extend(page.get("streams") or [])
        if not page.get("streams") or len(names) >= page.get("total", 0):
            return names


def describe(info: StreamInfo) -> Asset:
    name = info.config.name or ""
    kind = "kv" if name.startswith("KV_") else "objects" if name.startswith("OBJ_") else "stream"
    cluster = info.cluster
    followers = (cluster.replicas or []) if cluster else []
    current = (1 if cluster and cluster.leader else 0) + sum(1 for peer in followers if peer.current)
    storage = str(getattr(info.config.storage, "value", info.config.storage or "file"))  # a str from streams_info
    return Asset(name, kind, info.config.num_replicas or 1, storage, cluster.leader if cluster else None, current)
