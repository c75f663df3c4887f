"""What one worker process builds once and every stage shares."""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

from pipeline.bodies import BodyStore
from pipeline.broker import JetStreamBroker
from pipeline.db import make_engine, migrate
from pipeline.fetcher import Fetcher
from pipeline.netguard import AddressPolicy
from pipeline.politeness import Politeness
from pipeline.ratelimit import KVStore, Limiter
from pipeline.render import Renderer
from pipeline.settings import LLMSettings, Settings, current
from pipeline.stages import Context
from pipeline.webhooks import new_secret

if TYPE_CHECKING:
    from pipeline.llm.analyser import LLMAnalyser

_lock = threading.Lock()
_context: Context | None = None


def webhook_secret(settings: Settings) -> str:
    """``PIPELINE_WEBHOOK_SECRET``, or one generated once and kept in ``<home>/webhook-secret``."""
    if settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value()
    home = settings.home
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


def llm_analyser(broker: JetStreamBroker, settings: LLMSettings) -> LLMAnalyser | None:
    """The LLM analyser when a key is configured, its quotas shared through the broker's NATS.

    Without a key the openai SDK is never imported."""
    if not settings.enabled:
        return None
    from pipeline.llm.analyser import LLMAnalyser, quota
    from pipeline.llm.cache import VerdictCache

    limiter = Limiter(KVStore.from_broker(broker, "ratelimit"), quota(settings))
    return LLMAnalyser(settings, limiter, VerdictCache(broker))


def context(broker: JetStreamBroker, settings: Settings | None = None) -> Context:
    """This process's context, built on first use from ``settings`` (default: the process's)."""
    global _context
    with _lock:
        if _context is None:
            settings = settings or current()
            engine = make_engine(settings.database_url())
            migrate(engine)
            fetcher = Fetcher(AddressPolicy.from_entries(settings.fetch.allow_hosts))
            _context = Context(
                engine,
                BodyStore(broker),
                fetcher,
                webhook_secret(settings),
                Politeness(broker, settings.fetch.domain_interval),
                llm_analyser(broker, settings.llm),
                Renderer.configured(fetcher, settings.render),  # its browser starts on the first render
                BodyStore.screenshots(broker),
            )
        return _context


def reset() -> None:
    """Forget the shared context (tests switch databases between runs)."""
    global _context
    with _lock:
        if _context is not None:
            if _context.renderer is not None:
                _context.renderer.close()
            _context.fetcher.close()
            _context.engine.dispose()
        _context = None
