"""Events: how programs in any language feed the pipeline.

A producer publishes plain JSON to one of these NATS subjects (``nats pub
pipeline.events.check '{"url": "https://example.com"}'``).  Each event is
validated here; an invalid one is dead-lettered with the validation error,
never dropped.  The JSON Schemas in ``docs/schemas/`` are generated from
these models (``pipeline schemas``), so the documentation cannot drift.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    UrlConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.names import EVENT_KINDS, event_subject

#: Subjects under which producers publish events, by event kind, for the default prefix.
SUBJECTS = {kind: event_subject(kind) for kind in EVENT_KINDS}

#: The largest event accepted, in bytes (NATS' default max payload is 1 MiB).
MAX_EVENT_BYTES = 1024 * 1024
#: The longest URL accepted: what the database keeps, and what servers commonly take (RFC 9110 §4.1 asks 8000).
MAX_URL_LENGTH = 2048
#: Ids are 64-bit signed integers in the database: a larger number is no monitor, and no crash either.
MonitorId = Annotated[int, Field(strict=True, gt=0, le=2**63 - 1, description="A monitor's id")]

#: How a page is got: a plain GET, or headless Chromium (pipeline.render).
Fetch = Literal["http", "browser"]

NotifyTarget = Annotated[str, Field(min_length=3, max_length=2048, description="An Apprise URL or https webhook")]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _WhatMatters(_Event):
    selector: str | None = Field(
        None,
        max_length=512,
        description="What to watch: CSS (`.price`), XPath (`//p` or `xpath:...`) or JSONPath (`$.item.price`)",
    )
    rule: str | None = Field(None, max_length=1000, description="Offline rule, e.g. `price < 100` or `/sold out/i`")
    question: str | None = Field(None, max_length=2000, description="A question for the LLM analyser")
    notify: list[NotifyTarget] = Field(default_factory=list, max_length=20, description="Where to send alerts")

    @field_validator("selector")
    @classmethod
    def _selector_syntax(cls, selector: str | None) -> str | None:
        if selector is not None:
            from pipeline.content.selectors import parse_selector  # lxml and lexbor load only when needed

            parse_selector(selector)  # a SelectorError is a ValueError: pydantic reports it with the field
        return selector

    @field_validator("rule")
    @classmethod
    def _rule_syntax(cls, rule: str | None) -> str | None:
        from pipeline.rules import parse_rule

        parse_rule(rule)  # a RuleError is a ValueError, reported with the field
        return rule

    @field_validator("notify")
    @classmethod
    def _known_schemes(cls, targets: list[str]) -> list[str]:
        for target in targets:
            if "://" not in target:  # not echoed: it may be a password or a token without its scheme
                raise ValueError("a notify target is not a URL (scheme://...)")
            if not notifier_known(target):  # a typo is refused here, not found when the first alert fails
                scheme = target.split("://", 1)[0][:20]
                raise ValueError(
                    f"notify target {scheme}://… is neither a webhook (http, https) nor a notification URL"
                    " Apprise knows (each service's form: https://github.com/caronc/apprise/wiki)"
                )
        return targets


@functools.lru_cache(maxsize=4096)
def notifier_known(target: str) -> bool:
    """Whether ``target`` is a webhook URL or one Apprise parses into a notifier (its URL grammar, not ours).

    Parsing only: nothing is sent or resolved.  Remembered per target: the ingest sees the same few often.
    """
    if target.split("://", 1)[0].lower() in ("http", "https"):
        return True
    import apprise

    said = logging.getLogger("apprise")
    was, said.disabled = said.disabled, True  # Apprise says what was wrong with a token by quoting it: a secret
    try:
        return apprise.Apprise.instantiate(target, suppress_exceptions=True) is not None
    finally:
        said.disabled = was


class CheckEvent(_WhatMatters):
    """An ad-hoc check of a URL: fetch it, extract, compare, analyse, alert."""

    kind: Literal["check"] = "check"
    url: Annotated[AnyHttpUrl, UrlConstraints(max_length=MAX_URL_LENGTH)] = Field(description="http(s) URL to fetch")
    fetch: Fetch = Field(
        "http",
        description="How the page is got: `http`, a plain GET; `browser`, headless Chromium runs its scripts first"
        " (the `render` queue)",
    )
    wait_for: str | None = Field(
        None,
        max_length=512,
        description="With `browser`: a CSS selector to wait for (unset: until the network is idle)",
    )

    @field_validator("wait_for")
    @classmethod
    def _css(cls, wait_for: str | None) -> str | None:
        return css_selector(wait_for)

    @model_validator(mode="after")
    def _wait_for_needs_a_browser(self) -> CheckEvent:
        if self.wait_for is not None and self.fetch != "browser":
            raise ValueError('wait_for needs "fetch": "browser": only a browser runs the page\'s scripts')
        return self


def css_selector(text: str | None) -> str | None:
    """``text`` if it is a CSS selector (cssselect's grammar); ``ValueError`` with the reason if not."""
    if text is not None:
        import cssselect

        try:
            cssselect.parse(text)
        except cssselect.SelectorError as e:
            raise ValueError(f"{text!r} is not a CSS selector: {e}") from None
    return text


class MonitorEvent(_Event):
    """Check a stored monitor now."""

    kind: Literal["monitor"] = "monitor"
    monitor_id: MonitorId


class ContentEvent(_WhatMatters):
    """Content the producer already has: skips fetch and starts at scrape."""

    kind: Literal["content"] = "content"
    source: str = Field(min_length=1, max_length=2048, description="What the content is of: a URL or any stable name")
    content: str = Field(max_length=MAX_EVENT_BYTES)
    content_type: Literal[
        "text/html", "text/plain", "application/json", "application/xml", "application/rss+xml", "application/atom+xml"
    ] = "text/html"
    monitor_id: MonitorId | None = None


Event = CheckEvent | MonitorEvent | ContentEvent

MODELS: dict[str, type[_Event]] = {"check": CheckEvent, "monitor": MonitorEvent, "content": ContentEvent}


class InvalidEventError(ValueError):
    """An event that cannot be processed; ``reason`` says why, for the dead letter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_event(subject: str, data: bytes) -> Event:
    """Validate an event published on ``subject``; raise ``InvalidEventError`` with a readable reason.

    The subject is ``<prefix>.events.<kind>``; the prefix is ``pipeline`` unless the
    deployment set another (several pipelines on one NATS account).
    """
    *_, events, kind = ["", "", *subject.split(".")]
    model = MODELS.get(kind)
    if model is None or events != "events":
        raise InvalidEventError(f"unknown event subject {subject!r}; expected one of {sorted(SUBJECTS.values())}")
    if len(data) > MAX_EVENT_BYTES:
        raise InvalidEventError(f"event of {len(data)} bytes is over the {MAX_EVENT_BYTES} byte limit")
    try:
        payload = json.loads(data, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise InvalidEventError("not JSON this pipeline reads: nested too deeply") from None
    except ValueError as e:  # not UTF-8, not JSON, or an integer longer than Python reads (4,300 digits)
        raise InvalidEventError(f"not JSON: {str(e)[:200]}") from None
    if not isinstance(payload, dict):
        raise InvalidEventError(f"expected a JSON object, got {type(payload).__name__}")
    payload.setdefault("kind", kind)
    try:
        return model.model_validate(payload)  # type: ignore[return-value]
    except ValidationError as e:
        raise InvalidEventError(_describe(e)) from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON allows a key twice and most parsers keep the last (RFC 8259 §4): an event that says two
    things about one field is refused rather than guessed at."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key!r} is given twice")
        result[key] = value
    return result


def _describe(error: ValidationError) -> str:
    return "; ".join(_problem(item) for item in error.errors())


def first_error(error: ValidationError) -> str:
    """The first problem of a failed validation, as ``field: why`` (what a command line shows)."""
    return _problem(error.errors()[0])


def _problem(item: Any) -> str:
    where = ".".join(str(part) for part in item["loc"]) or "event"
    return f"{where}: {item['msg'].removeprefix('Value error, ')}"


def json_schemas() -> dict[str, dict]:
    """The JSON Schema of each event kind, as published in ``docs/schemas/``."""
    schemas = {}
    for kind, model in MODELS.items():
        schema = model.model_json_schema()
        schema["$id"] = f"{SUBJECTS[kind]}.schema.json"
        schema["description"] = f"Publish to NATS subject `{SUBJECTS[kind]}`. " + (model.__doc__ or "").strip()
        schemas[kind] = schema
    return schemas
