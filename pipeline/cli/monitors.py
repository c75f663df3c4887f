"""``pipeline monitor``: add, edit, show, list, pause, resume and remove monitors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from pipeline import redact
from pipeline.cli.common import JSON_OPTION, MONITOR_ID, bad_input, echo_json, engine, read_bytes, settings, table

if TYPE_CHECKING:
    from pipeline.netguard import AddressPolicy

app = typer.Typer(help="Add, edit, list, pause, resume and remove monitors.", no_args_is_help=True)

SELECTOR_HELP = "The part to watch: CSS (.price), XPath (//p, xpath:...) or JSONPath ($.item.price)."
RULE_HELP = 'When a change matters: changed | "phrase" | /regex/i | price < 100.'


#: The longest name a monitor takes (its column's length).
NAME_MAX = 200
BROWSER_HELP = "Load the page in headless Chromium (the render stage), for pages written by JavaScript."
WAIT_FOR_HELP = "With --browser: a CSS selector to wait for (default: until the network is idle)."


@app.command("add")
def add(
    url: str = typer.Argument(..., help="http(s) URL to watch."),
    name: str = typer.Option("", help="A name to show (default: the URL)."),
    selector: str = typer.Option(None, help=SELECTOR_HELP),
    rule: str = typer.Option(None, help=RULE_HELP),
    question: str = typer.Option(None, help="A question for the LLM analyser about each change that passes the rule."),
    every: int = typer.Option(3600, help="Seconds between checks (at least 30)."),
    notify: list[str] = typer.Option([], help="Webhook or Apprise URL to alert (repeatable)."),
    browser: bool = typer.Option(False, "--browser", help=BROWSER_HELP),
    wait_for: str = typer.Option(None, help=WAIT_FOR_HELP),
) -> None:
    """Watch a URL; prints the new monitor's id."""
    from pydantic import ValidationError

    from pipeline import queries
    from pipeline.events import CheckEvent, first_error
    from pipeline.models import Monitor

    if wait_for and not browser:
        bad_input("--wait-for needs --browser: only a browser runs the page's scripts")
    fetch = "browser" if browser else "http"
    try:  # the same checks as an event's: URL, selector and rule syntax, targets
        CheckEvent.model_validate({"url": url, "selector": selector, "rule": rule, "question": question,
                                   "notify": notify, "fetch": fetch, "wait_for": wait_for})  # fmt: skip
    except ValidationError as e:
        bad_input(first_error(e))
    from pipeline.monitor_files import MAX_EVERY, MIN_EVERY

    if not MIN_EVERY <= every <= MAX_EVERY:
        bad_input(f"--every must be from {MIN_EVERY} seconds to {MAX_EVERY} (a year), got {every}")
    monitor = Monitor(name=name or redact.display_url(url), url=url, selector=selector, rule=rule, question=question,
                      interval_seconds=every, notify=list(notify), fetch=fetch, wait_for=wait_for)  # fmt: skip
    typer.echo(queries.add_monitor(engine(), monitor))
    if _refused(url, _policy()):
        typer.echo(f"warning: {_REFUSED}", err=True)
    if question and not settings().llm.enabled:
        typer.echo(
            "warning: no OpenAI key here (PIPELINE_OPENAI_API_KEYS): unless the pipeline runs with one, the"
            " question is not asked and the rule alone decides",
            err=True,
        )


@app.command("edit")
def edit(
    monitor_id: int = MONITOR_ID,
    url: str = typer.Option(None, help="A new http(s) URL to watch."),
    name: str = typer.Option(None, help="A new name to show."),
    selector: str = typer.Option(None, help=SELECTOR_HELP + ' "" for the whole page.'),
    rule: str = typer.Option(None, help=RULE_HELP + ' "" for changed.'),
    question: str = typer.Option(None, help='A new question for the LLM analyser; "" for none.'),
    every: int = typer.Option(None, help="Seconds between checks (at least 30)."),
    notify: list[str] = typer.Option(None, help='The targets to alert, replacing them all (repeatable); "" for none.'),
    browser: bool = typer.Option(None, "--browser/--http", help="Load the page in headless Chromium, or fetch it."),
    wait_for: str = typer.Option(None, help=WAIT_FOR_HELP + ' "" for none.'),
) -> None:
    """Change what is given of a monitor; the rest stays.

    Its next check, and a replay of its dead letters (`pipeline dlq replay`), use the new settings. A new
    URL or selector is compared with the last text seen, so its first check may report a change.
    """
    from pydantic import ValidationError

    from pipeline import queries
    from pipeline.events import CheckEvent, first_error
    from pipeline.monitor_files import MAX_EVERY, MIN_EVERY

    database = engine()
    monitor = queries.get_monitor(database, monitor_id)
    if monitor is None:
        bad_input(f"no monitor {monitor_id}")
    given: dict[str, Any] = {"url": url, "name": name, "selector": selector, "rule": rule, "question": question,
                             "interval_seconds": every, "wait_for": wait_for}  # fmt: skip
    changes: dict[str, Any] = {field: (value.strip() or None) if isinstance(value, str) else value
                               for field, value in given.items() if value is not None}  # fmt: skip
    if notify:
        changes["notify"] = [target for target in notify if target]
    if browser is not None:
        changes["fetch"] = "browser" if browser else "http"
    if not changes:
        bad_input("nothing to change: give --url, --selector, --rule, --question, --every, --notify, --browser ...")
    if "name" in changes and not changes["name"]:
        bad_input("--name cannot be empty")
    if len(changes.get("name") or "") > NAME_MAX:
        bad_input(f"--name is at most {NAME_MAX} characters")
    after = {**monitor.model_dump(), **changes}
    if wait_for and after["fetch"] != "browser":
        bad_input("--wait-for needs --browser: only a browser runs the page's scripts")
    if after["fetch"] != "browser" and after["wait_for"] is not None:  # only a browser waits for a selector
        changes["wait_for"] = after["wait_for"] = None
    try:  # the same checks as add's
        CheckEvent.model_validate({key: after[key] for key in ("url", "selector", "rule", "question", "notify",
                                                              "fetch", "wait_for")})  # fmt: skip
    except ValidationError as e:
        bad_input(first_error(e))
    if not MIN_EVERY <= after["interval_seconds"] <= MAX_EVERY:
        bad_input(f"--every must be from {MIN_EVERY} seconds to {MAX_EVERY} (a year), got {every}")
    if "interval_seconds" in changes:  # a shorter interval starts now, not after the old one's wait
        from datetime import timedelta

        from pipeline.models import as_utc, utcnow

        soonest = utcnow() + timedelta(seconds=changes["interval_seconds"])
        if as_utc(monitor.next_check_at) > soonest:
            changes["next_check_at"] = soonest
    queries.update_monitor(database, monitor_id, changes)
    shown = sorted("every" if field == "interval_seconds" else field for field in changes if field != "next_check_at")
    typer.echo(f"edited monitor {monitor_id}: {', '.join(shown)}")
    if "url" in changes and _refused(after["url"], _policy()):
        typer.echo(f"warning: {_REFUSED}", err=True)


@app.command("show")
def show(monitor_id: int = MONITOR_ID, as_json: bool = JSON_OPTION) -> None:
    """One monitor in full, with its latest checks and findings."""
    from pipeline import queries

    monitor = queries.get_monitor(engine(), monitor_id)
    if monitor is None:
        bad_input(f"no monitor {monitor_id}")
    history = queries.monitor_history(engine(), monitor_id)
    dumped = monitor.model_dump(mode="json")
    data = {field: dumped[field] for field in type(monitor).model_fields if field in dumped}  # declared order
    data = {("every" if key == "interval_seconds" else key): value for key, value in data.items()}  # as list, import
    data["url"] = redact.display_url(data["url"]) if data.get("url") else None
    data["notify"] = [redact.redact_url(target) for target in data["notify"]]
    checks = [
        {"at": c.started_at.isoformat(timespec="seconds"), "stage": c.stage, "outcome": c.outcome, "detail": c.detail}
        for c in history.checks
    ]
    findings = [
        {"at": f.created_at.isoformat(timespec="seconds"), "relevant": f.relevant, "analyser": f.analyser,
         "summary": f.summary}
        for f in history.findings
    ]  # fmt: skip
    data["screenshot"] = history.screenshot  # the latest rendered page's PNG, by its key in the object store
    if as_json:
        echo_json({**data, "recent_checks": checks, "recent_findings": findings})
        return
    for key, value in data.items():
        typer.echo(f"{key}: {value}")
    typer.echo("recent checks:")
    rows = ([c["at"], c["stage"], c["outcome"], c["detail"][:200]] for c in checks)
    table(["AT", "STAGE", "OUTCOME", "DETAIL"], rows)
    typer.echo("recent findings:")
    table(
        ["AT", "RELEVANT", "ANALYSER", "SUMMARY"],
        ([f["at"], "yes" if f["relevant"] else "no", f["analyser"], f["summary"]] for f in findings),
    )


@app.command("list")
def list_(as_json: bool = JSON_OPTION) -> None:
    """Every monitor, with its URL, how it is fetched, its rule, state and next check."""
    from pipeline import queries

    rows = [
        {
            "id": m.id,
            "name": m.name,
            "url": redact.display_url(m.url) if m.url else None,
            "fetch": m.fetch,
            "selector": m.selector,
            "rule": m.rule,
            "question": m.question,
            "every": m.interval_seconds,
            "paused": m.paused,
            "next_check_at": m.next_check_at.isoformat(timespec="seconds"),
        }
        for m in queries.list_monitors(engine())
    ]
    if as_json:
        echo_json(rows)
        return
    table(
        ["ID", "NAME", "URL", "FETCH", "RULE", "EVERY", "STATE"],
        (
            [r["id"], r["name"], r["url"] or "-", r["fetch"], r["rule"] or "changed", f"{r['every']}s",
             "paused" if r["paused"] else f"next {r['next_check_at']}"]
            for r in rows
        ),
    )  # fmt: skip


@app.command("pause")
def pause(monitor_id: int = MONITOR_ID) -> None:
    """Stop checking a monitor (it keeps its history)."""
    from pipeline import queries

    if not queries.set_paused(engine(), monitor_id, True):
        bad_input(f"no monitor {monitor_id}")
    typer.echo(f"paused monitor {monitor_id}")


@app.command("resume")
def resume(monitor_id: int = MONITOR_ID) -> None:
    """Check a paused monitor again."""
    from pipeline import queries

    if not queries.set_paused(engine(), monitor_id, False):
        bad_input(f"no monitor {monitor_id}")
    typer.echo(f"resumed monitor {monitor_id}")


@app.command("rm")
def remove(monitor_id: int = MONITOR_ID) -> None:
    """Remove a monitor; its history stays, under an id no new monitor gets."""
    from pipeline import queries

    if not queries.remove_monitor(engine(), monitor_id):
        bad_input(f"no monitor {monitor_id}")
    typer.echo(f"removed monitor {monitor_id}")


@app.command("import")
def import_(
    file: str = typer.Argument(..., help="CSV (with a header), JSON lines, or a list of URLs; - reads stdin."),
    fmt: str = typer.Option(None, "--format", help="csv | jsonl | urls [default: from the name, else the content]."),
    selector: str = typer.Option(None, help="For rows without one. " + SELECTOR_HELP),
    rule: str = typer.Option(None, help="For rows without one. " + RULE_HELP),
    every: int = typer.Option(3600, help="Seconds between checks, for rows without one."),
    notify: list[str] = typer.Option([], help="Targets for rows without any (repeatable)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Add many monitors at once, each row checked as `monitor add` checks one.

    Good rows are stored together (all or none); bad rows are reported by line number and skipped,
    and then the exit code is 2.
    """
    import time

    from pipeline import queries
    from pipeline.monitor_files import BadRow, MonitorFileError, Row, check_defaults, read, sniff

    started = time.monotonic()
    text = _read_text(read_bytes(file), file)
    if fmt not in (None, "csv", "jsonl", "urls"):
        bad_input(f"--format {fmt!r}: use csv, jsonl or urls")
    defaults = {"selector": selector, "rule": rule, "every": every, "notify": list(notify)}
    try:
        check_defaults(defaults)
    except MonitorFileError as e:
        bad_input(f"options: {e}")
    rows: list[Row] = []
    bad: list[BadRow] = []
    try:
        for row in read(text, fmt or sniff(text, file), defaults):  # type: ignore[arg-type]
            (rows if isinstance(row, Row) else bad).append(row)  # type: ignore[arg-type]
    except MonitorFileError as e:
        bad_input(f"{file}: {e}")
    columns = ("url", "name", "selector", "rule", "question", "interval_seconds", "notify", "fetch", "wait_for")
    count, first, last = queries.add_monitors(engine(), ({c: getattr(r, c) for c in columns} for r in rows))
    seconds = time.monotonic() - started
    if as_json:
        echo_json({"imported": count, "first_id": first or None, "last_id": last or None, "seconds": round(seconds, 2),
                   "bad_rows": [{"line": b.line, "error": b.reason} for b in bad]})  # fmt: skip
    else:
        for b in bad[:50]:
            typer.echo(f"line {b.line}: {b.reason}", err=True)
        if len(bad) > 50:
            typer.echo(f"... and {_plural(len(bad) - 50, 'more bad row')}", err=True)
        ids = f" (ids {first}..{last})" if count > 1 else f" (id {first})" if count else ""
        skipped = f"; {_plural(len(bad), 'bad row')} skipped" if bad else ""
        typer.echo(f"imported {_plural(count, 'monitor')}{ids} in {seconds:.1f} s{skipped}")
    policy = _policy()
    refused = sum(_refused(r.url, policy) for r in rows)
    if refused and not as_json:
        typer.echo(f"warning: {_plural(refused, 'monitor')} on a non-public address: {_REFUSED}", err=True)
    if bad:
        raise typer.Exit(2)


def _read_text(data: bytes, file: str) -> str:
    """A text file as the user's tools wrote it: UTF-8, with or without a byte-order mark."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad_input(f"{file}: not UTF-8 text (byte {e.start})")


def _plural(count: int, noun: str) -> str:
    """``1 monitor``, ``2 monitors``, ``1,000 monitors``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


_REFUSED = (
    "this machine's address policy refuses the address, so its checks fail until the pipeline"
    " runs with PIPELINE_FETCH_ALLOW_HOSTS naming it"
)


def _policy() -> AddressPolicy:
    """The address policy of this machine's settings, as the fetcher here would apply it."""
    from pipeline.netguard import AddressPolicy

    return AddressPolicy.from_entries(settings().fetch.allow_hosts)


def _refused(url: str, policy: AddressPolicy) -> bool:
    """Whether ``policy`` refuses the URL's host as written (``AddressPolicy.refuses_unresolved``).

    Stored all the same (where the pipeline runs, the policy may allow it), with a warning: otherwise
    the first sign is a failed check.  Names are not resolved here (a slow or absent DNS would hold
    up ``monitor add``); the fetcher checks every address it connects to.
    """
    from urllib.parse import urlsplit

    return policy.refuses_unresolved(urlsplit(url).hostname or "")
