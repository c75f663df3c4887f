"""Event validation: what producers may publish, and the errors they get."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.events import CheckEvent, ContentEvent, InvalidEventError, MonitorEvent, json_schemas, parse_event

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def test_a_check_event_is_parsed() -> None:
    event = parse_event(
        "pipeline.events.check",
        json.dumps(
            {"url": "https://example.com/p", "rule": "price < 100", "notify": ["json://localhost/hook"]}
        ).encode(),
    )
    assert isinstance(event, CheckEvent)
    assert str(event.url) == "https://example.com/p"
    assert event.rule == "price < 100"


def test_monitor_and_content_events_are_parsed() -> None:
    assert parse_event("pipeline.events.monitor", b'{"monitor_id": 42}') == MonitorEvent(monitor_id=42)
    content = parse_event("pipeline.events.content", b'{"source": "feed-7", "content": "<p>hi</p>"}')
    assert isinstance(content, ContentEvent)
    assert content.content_type == "text/html"


@pytest.mark.parametrize(
    ("subject", "data", "reason"),
    [
        ("pipeline.events.check", b"{not json", "not JSON"),
        ("pipeline.events.check", b"[1, 2]", "expected a JSON object, got list"),
        ("pipeline.events.check", b'{"url": "ftp://example.com"}', "url: URL scheme should be 'http' or 'https'"),
        (
            "pipeline.events.check",
            b'{"url": "https://e.com", "colour": "red"}',
            "colour: Extra inputs are not permitted",
        ),
        ("pipeline.events.check", b'{"url": "https://e.com", "notify": ["nobody"]}', "is not a URL"),
        ("pipeline.events.check", b'{"url": "https://e.com", "notify": ["foo://bar"]}', "neither a webhook"),
        ("pipeline.events.check", b'{"url": "https://e.com", "notify": ["slack://s3cret"]}', "slack://… is neither"),
        ("pipeline.events.monitor", b'{"monitor_id": 0}', "monitor_id: Input should be greater than 0"),
        ("pipeline.events.monitor", b"{}", "monitor_id: Field required"),
        ("pipeline.events.nope", b"{}", "unknown event subject 'pipeline.events.nope'"),
        ("pipeline.events.check", b"\xff\xfe", "not JSON"),
        ("pipeline.events.check", b'{"url": "https://e.com", "rule": "price <"}', "rule: cannot understand rule"),
        ("pipeline.events.check", b'{"url": "https://e.com", "selector": "p["}', "selector: invalid selector 'p['"),
        ("pipeline.events.check", b'{"url": "https://e.com", "selector": "$.a[?("}', "selector: invalid JSONPath"),
        ("pipeline.events.content", b'{"source": "s", "content": "x", "rule": "/(/"}', "invalid regular expression"),
        ("pipeline.events.content", b'{"source": "s", "content": "x", "selector": "//["}', "invalid XPath"),
        ("pipeline.events.check", b'{"url": "https://e.com", "fetch": "chrome"}', "fetch: Input should be 'http'"),
        (
            "pipeline.events.check",
            b'{"url": "https://e.com", "fetch": "browser", "wait_for": ".price[["}',
            "wait_for: '.price[[' is not a CSS selector",
        ),
        (
            "pipeline.events.check",
            b'{"url": "https://e.com", "wait_for": ".price"}',
            'wait_for needs "fetch": "browser"',
        ),
    ],
)
def test_invalid_events_say_why(subject: str, data: bytes, reason: str) -> None:
    with pytest.raises(InvalidEventError) as raised:
        parse_event(subject, data)
    assert reason in raised.value.reason


def test_oversized_events_are_refused() -> None:
    with pytest.raises(InvalidEventError, match="over the"):
        parse_event("pipeline.events.content", b" " * (1024 * 1024 + 1))


def test_published_json_schemas_match_the_models() -> None:
    for kind, schema in json_schemas().items():
        path = SCHEMAS / f"{kind}.schema.json"
        assert path.exists(), f"run `pipeline schemas` to write {path}"
        assert json.loads(path.read_text()) == schema, f"{path} is stale: run `pipeline schemas`"


def test_a_key_given_twice_is_refused_not_guessed() -> None:
    with pytest.raises(InvalidEventError, match="the key 'url' is given twice"):
        parse_event("pipeline.events.check", b'{"url": "https://a.example", "url": "https://b.example"}')


@pytest.mark.parametrize("target", ["slack://s3cret-token", "user:s3cret@smtp.example.com", "hooks.slack.com/s3cret"])
def test_a_refused_notify_target_keeps_its_secret_out_of_the_reason(target: str) -> None:
    with pytest.raises(InvalidEventError) as raised:
        parse_event("pipeline.events.check", json.dumps({"url": "https://e.com", "notify": [target]}).encode())
    assert "s3cret" not in raised.value.reason and "notify" in raised.value.reason


@pytest.mark.parametrize(
    "target", ["https://hooks.example.com/a", "mailto://u:p@example.com", "json://127.0.0.1:8080/x", "discord://1/ab"]
)
def test_webhooks_and_notification_urls_apprise_knows_are_taken(target: str) -> None:
    event = parse_event("pipeline.events.check", json.dumps({"url": "https://e.com", "notify": [target]}).encode())
    assert isinstance(event, CheckEvent) and event.notify == [target]
