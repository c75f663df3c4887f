"""No secret in logs: URLs in log records are cut to scheme and host."""

from __future__ import annotations

import logging

from pipeline.redact import display_url, install, redact_text, redact_url


def test_urls_lose_paths_queries_and_credentials() -> None:
    text = "fetch({'url': 'https://u:pw@shop.example/p?api_key=S3CRET', 'notify': ['slack://T0/B0/XyZ', 'mailtos://a:P4ss@gmail.com']})"
    redacted = redact_text(text)
    for secret in ("S3CRET", "pw@", "XyZ", "P4ss", "T0/B0"):
        assert secret not in redacted
    assert "https://shop.example/…" in redacted


def test_installed_in_a_process_log_records_and_tracebacks_are_redacted(caplog) -> None:
    install()
    install()  # idempotent
    logger = logging.getLogger("dramatiq.worker.WorkerThread")
    try:
        raise ValueError("cannot reach https://hooks.example.com/services/T1/B1/SECRETPATH")
    except ValueError:
        logger.error("Failed to process message %s", {"notify": ["https://h.example/x?token=TOPSECRET"]}, exc_info=True)
    text = caplog.text
    assert "TOPSECRET" not in text and "SECRETPATH" not in text
    assert "https://h.example/…" in text


def test_one_rule_for_every_url_shown() -> None:
    assert redact_url("https://u:pw@shop.example:8443/p?k=1") == "https://shop.example:8443/…"
    assert redact_url("slack://T0/B0/XyZ") == "slack://…"
    assert display_url("https://u:pw@shop.example/feed?api_key=K") == "https://shop.example/feed"
