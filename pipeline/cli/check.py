"""``pipeline check``: what a monitor would watch on a page now, and what its rule (and the LLM) say."""

from __future__ import annotations

import re
from typing import Any

import typer

from pipeline.cli.common import JSON_OPTION, bad_input, connected_broker, echo_json, fail, settings
from pipeline.cli.monitors import BROWSER_HELP, RULE_HELP, SELECTOR_HELP, WAIT_FOR_HELP

#: C0 and C1 control characters but newline and tab: what a terminal would obey.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def check(
    url: str = typer.Argument(..., help="http(s) URL to check now."),
    selector: str = typer.Option(None, help=SELECTOR_HELP),
    rule: str = typer.Option(None, help=RULE_HELP),
    question: str = typer.Option(None, help="Ask the LLM analyser too (needs PIPELINE_OPENAI_API_KEYS)."),
    browser: bool = typer.Option(False, "--browser", help=BROWSER_HELP),
    wait_for: str = typer.Option(None, help=WAIT_FOR_HELP),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fetch a URL now and show what a monitor would watch and what its rule (and the LLM) say; nothing is stored.

    Exit codes: 0 it matters, 3 it does not, 1 the page or the LLM could not be read, 2 bad input.
    The LLM call takes its slot in the same shared quota as the workers' calls.
    """
    from pydantic import ValidationError

    from pipeline.content import ExtractError, diff, extract
    from pipeline.events import CheckEvent, first_error
    from pipeline.fetcher import Fetcher, FetchError
    from pipeline.netguard import AddressPolicy
    from pipeline.rules import RuleError, parse_rule

    if wait_for and not browser:
        bad_input("--wait-for needs --browser: only a browser runs the page's scripts")
    try:  # the same checks as an event's: a bad selector or rule is bad input (2), not a bad page (1)
        CheckEvent.model_validate({"url": url, "selector": selector, "rule": rule, "question": question,
                                   "fetch": "browser" if browser else "http", "wait_for": wait_for})  # fmt: skip
    except ValidationError as e:
        bad_input(first_error(e))
    parsed = parse_rule(rule)
    fetcher = Fetcher(AddressPolicy.from_entries(settings().fetch.allow_hosts))
    try:
        if browser:
            from pipeline.render import Renderer, RenderError

            renderer = Renderer.configured(fetcher, settings().render)
            try:
                rendered = renderer.render(url, wait_for=wait_for)
            except RenderError as e:
                (fail if e.transient else bad_input)(str(e))
            finally:
                renderer.close()
            extracted, status = extract(rendered.html, "text/html; charset=utf-8", selector), rendered.status
        else:
            result = fetcher.fetch(url)
            extracted, status = extract(result.body, result.content_type, selector), result.status
    except (FetchError, ExtractError) as e:
        fail(str(e))
    finally:
        fetcher.close()
    text = extracted.text
    change = diff(None, text)
    try:
        verdict = parsed.evaluate(change)
    except RuleError as e:  # a regular expression that runs away on this page
        bad_input(str(e))
    if question and verdict.relevant:
        verdict = _ask_llm(question, change)
    if as_json:
        echo_json({"text": text, "kind": extracted.kind.value, "encoding": extracted.encoding, "note": extracted.note,
                   "relevant": verdict.relevant, "summary": verdict.summary, "evidence": list(verdict.evidence),
                   "status": status})  # fmt: skip
    else:
        shown = text[:2000] + ("\n…" if len(text) > 2000 else "")
        typer.echo(_CONTROL.sub("\ufffd", shown))  # a page's escape sequences never reach the terminal
        if extracted.note:
            typer.echo(f"({extracted.note})")
        typer.echo(f"\n{'MATCHES' if verdict.relevant else 'no match'}: {_CONTROL.sub('', verdict.summary)}")
    raise typer.Exit(0 if verdict.relevant else 3)


def _ask_llm(question: str, change: Any) -> Any:
    from pipeline.llm import LLMRejectedError, LLMUnavailableError
    from pipeline.ratelimit import RateLimitedError
    from pipeline.runtime import llm_analyser

    broker = connected_broker(start=True)
    try:
        analyser = llm_analyser(broker, settings().llm)
        if analyser is None:
            bad_input("--question needs an OpenAI key: set PIPELINE_OPENAI_API_KEYS (or OPENAI_API_KEY)")
        return analyser.judge(question, change)
    except (LLMRejectedError, LLMUnavailableError, RateLimitedError) as e:
        fail(f"the LLM could not answer: {e}")
    finally:
        broker.close()
