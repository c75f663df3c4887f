"""What one worker process builds once and every stage shares."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from pipeline.bodies import BodyStore
from pipeline.broker import JetStreamBroker
from pipeline.db import make_engine, migrate
from pipeline.fetcher import Fetcher
from pipeline.llm import LLMAnalyser, LLMSettings
from pipeline.llm.analyser import quota
from pipeline.llm.cache import VerdictCache
from pipeline.nats_server import state_home
from pipeline.netguard import AddressPolicy
from pipeline.politeness import Politeness
from pipeline.ratelimit import KVStore, Limiter
from pipeline.stages import Context
from pipeline.webhooks import new_secret

_lock = threading.Lock()
_context: Context | None = None


def webhook_secret(home: Path | None = None) -> str:
    """``$PIPELINE_WEBHOOK_SECRET``, or one generated once and kept in ``.pipeline/webhook-secret``."""
    secret = os.environ.get("PIPELINE_WEBHOOK_SECRET")
    if secret:
        return secret
    home = home or state_home()
    path = home / "webhook-secret"
    home.mkdir(parents=True, exist_ok=True)
    try:  # exactly one process creates it, readable by its owner only from the start
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(new_secret())
    for _ in range(50):  # a process that lost the race may read before the winner has written
        secret = path.read_text().strip()
        if secret:
            return secret
        time.sleep(0.02)
    raise RuntimeError(f"{path} is empty")


def llm_analyser(broker: JetStreamBroker) -> LLMAnalyser | None:
    """The LLM analyser when a key is configured, its quotas shared through the broker's NATS."""
    settings = LLMSettings.from_env()
    if settings is None:
        return None
    limiter = Limiter(KVStore.from_broker(broker, "ratelimit"), quota(settings))
    return LLMAnalyser(settings, limiter, VerdictCache(broker))


def context(broker: JetStreamBroker) -> Context:
    global _context
    with _lock:
        if _context is None:
            engine = make_engine()
            migrate(engine)
            _context = Context(
                engine,
                BodyStore(broker),
                Fetcher(AddressPolicy.from_env()),
                webhook_secret(),
                Politeness(broker),
                llm_analyser(broker),
            )
        return _context


def reset() -> None:
    """Forget the shared context (tests switch databases between runs)."""
    global _context
    with _lock:
        if _context is not None:
            _context.fetcher.close()
            _context.engine.dispose()
        _context = None
