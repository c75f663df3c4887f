"""Monitors from a file: CSV, JSON lines or a plain list of URLs, checked row by row as ``monitor add`` checks one.

Each format carries the fields of ``pipeline monitor add``: ``url`` (required),
``name``, ``selector``, ``rule``, ``question``, ``every`` (seconds, at least
30), ``notify`` (targets: a list in JSON, whitespace-separated in CSV), ``fetch``
(``http`` or ``browser``) and ``wait_for`` (with ``browser``: a CSS selector).

- **CSV** (RFC 4180, read by Python's ``csv``): a header row naming the columns,
  in any order; unknown columns are an error of the file, not of each row.
- **JSON lines**: one object per line.
- **URL list**: one URL per line; blank lines and ``#`` comments are skipped.

Rows are numbered by the line they start on, so an error names a line the
user can open.  Defaults given on the command line (``--every``,
``--notify``...) fill what a row leaves out.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from pipeline import redact
from pipeline.events import CheckEvent, first_error

FIELDS = ("url", "name", "selector", "rule", "question", "every", "notify", "fetch", "wait_for")
Format = Literal["csv", "jsonl", "urls"]

#: The shortest interval a monitor may have, as ``monitor add`` enforces.
MIN_EVERY = 30
#: At most a year between checks: the scheduler adds it to a date, which past about 8,000 years overflows
#: (one such monitor stopped every monitor's scheduling).
MAX_EVERY = 366 * 24 * 3600


class MonitorFileError(ValueError):
    """The file as a whole cannot be read (unknown format, bad CSV header)."""


@dataclass(frozen=True)
class Row:
    """A monitor ready to store: the columns of ``monitors`` this file sets."""

    line: int
    url: str
    name: str
    selector: str | None
    rule: str | None
    question: str | None
    interval_seconds: int
    notify: list[str]
    fetch: str = "http"
    wait_for: str | None = None


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str


def sniff(text: str, filename: str = "") -> Format:
    """The format from the file's name (``.csv``, ``.jsonl``/``.ndjson``, ``.txt``), else from its first line."""
    lowered = filename.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    first = next((line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")), "")
    if first.startswith("{"):
        return "jsonl"
    if "url" in [cell.strip().lower() for cell in first.split(",")]:
        return "csv"
    return "urls"


def read(text: str, fmt: Format, defaults: dict[str, Any]) -> Iterator[Row | BadRow]:
    """Each row of the file, checked: a ``Row`` to store or a ``BadRow`` with its line and reason."""
    for line, fields in _records(text, fmt):
        if isinstance(fields, str):
            yield BadRow(line, fields)
        else:
            yield _checked(line, {**defaults, **{k: v for k, v in fields.items() if v not in (None, "")}})


def check_defaults(defaults: dict[str, Any]) -> None:
    """Raise ``MonitorFileError`` when the command line's defaults are bad in themselves.

    Otherwise every row that takes them would be reported for the same fault, line by line.
    """
    checked = _checked(0, {**defaults, "url": "https://example.com/"})
    if isinstance(checked, BadRow):
        raise MonitorFileError(checked.reason)


def _records(text: str, fmt: Format) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line, fields) per row, or (line, reason) for a row that is not even a record."""
    if fmt == "urls":
        for number, raw in enumerate(text.splitlines(), 1):
            if raw.strip() and not raw.lstrip().startswith("#"):
                yield number, {"url": raw.strip()}
    elif fmt == "jsonl":
        for number, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError as e:
                yield number, f"not JSON: {e}"
                continue
            if not isinstance(record, dict):
                yield number, "not a JSON object"
                continue
            unknown = sorted(set(record) - set(FIELDS))
            yield number, (f"unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})" if unknown else record)
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [name.strip().lower() for name in reader.fieldnames or []]
        unknown = sorted(set(header) - set(FIELDS))
        if "url" not in header or unknown:
            problem = f"unknown column {unknown[0]!r}" if unknown else "no url column"
            raise MonitorFileError(f"the CSV header must name its columns among {', '.join(FIELDS)}: {problem}")
        reader.fieldnames = header
        line = reader.line_num + 1
        for record in reader:
            if None in record:  # more cells than the header has columns
                yield line, f"{len(record[None]) + len(header)} cells for {len(header)} columns"
            else:
                yield line, {k: (v.strip() if isinstance(v, str) else v) for k, v in record.items()}
            line = reader.line_num + 1


def _checked(line: int, fields: dict[str, Any]) -> Row | BadRow:
    notify = fields.get("notify") or []
    if isinstance(notify, str):
        notify = notify.split()
    given = fields.get("every")
    try:
        if isinstance(given, bool) or (isinstance(given, float) and not given.is_integer()):
            raise ValueError(given)  # 60.5 is not silently 60, nor true 1
        every = 3600 if given in (None, "") else int(given)
    except (TypeError, ValueError):
        return BadRow(line, f"every: not a whole number of seconds: {given!r}")
    if every < MIN_EVERY:
        return BadRow(line, f"every: at least {MIN_EVERY} seconds, got {every}")
    if every > MAX_EVERY:
        return BadRow(line, f"every: at most {MAX_EVERY} seconds (a year), got {every}")
    try:  # the same checks as an event's and `monitor add`'s: URL, selector and rule syntax, targets
        event = CheckEvent.model_validate(
            {"url": fields.get("url"), "selector": fields.get("selector"), "rule": fields.get("rule"),
             "question": fields.get("question"), "notify": notify, "fetch": fields.get("fetch") or "http",
             "wait_for": fields.get("wait_for")}
        )  # fmt: skip
    except ValidationError as e:
        return BadRow(line, first_error(e))
    url = str(fields["url"]).strip()  # as given, as `monitor add` stores it
    name = str(fields.get("name") or redact.display_url(url))[:200]
    return Row(line, url, name, event.selector, event.rule, event.question, every, list(event.notify), event.fetch,
               event.wait_for)  # fmt: skip
