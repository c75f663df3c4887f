"""The offline rules analyser."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.content import first_number as parse_number
from pipeline.rules import AnyChange, Change, RuleError, Threshold, parse_rule


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("Price: 1,299.00 USD", 1299.0),
        ("89,99 €", 89.99),
        ("1.299,50", 1299.5),
        ("1 000 items", 1000.0),
        ("1.000", 1000.0),
        ("3.5 stars", 3.5),
        ("-4 degrees", -4.0),
        ("no digits", None),
    ],
)
def test_numbers_are_read_the_way_shops_write_them(text: str, number: float | None) -> None:
    assert parse_number(text) == number


@given(st.integers(min_value=-(10**9), max_value=10**9))
def test_plain_integers_round_trip(n: int) -> None:
    assert parse_number(f"total {n} units") == n


def test_threshold_fires_when_the_value_crosses() -> None:
    rule = parse_rule("price < 100")
    assert rule == Threshold("price", "<", 100)
    crossed = rule.evaluate(Change("Price 120", "Price 95", ("Price 95",), ("Price 120",)))
    assert crossed.relevant and crossed.summary == "price is 95 (was 120), < 100"
    assert not rule.evaluate(Change("Price 120", "Price 110")).relevant
    assert not rule.evaluate(Change("Price 95", "Price 95")).relevant  # no change, no alert
    assert rule.evaluate(Change(None, "Price 95")).relevant  # a first (ad-hoc) check answers now


@pytest.mark.parametrize(
    ("rule", "limit"),
    [("price < 89.500", 89.5), ("price < 89.5", 89.5), ("price > -2.25", -2.25), ("price < 1,299", 1299),
     ("price < 1.299.000", 1299000), ("price < 1.299,50", 1299.5), ("price < 100", 100)],
)  # fmt: skip
def test_a_rules_limit_with_one_point_is_a_decimal_as_in_code(rule: str, limit: float) -> None:
    assert parse_rule(rule) == Threshold("price", rule.split()[1], limit)


def test_a_regex_rule_names_its_flags_in_what_it_says() -> None:
    verdict = parse_rule("/in STOCK/is").evaluate(Change("gone", "In stock", ("In stock",), ("gone",)))
    assert verdict.relevant and verdict.summary == "/in STOCK/is appeared"


def test_phrase_and_regex_look_at_what_was_added() -> None:
    phrase = parse_rule('"Sold Out"')
    assert phrase.evaluate(Change("in stock", "sold out", ("sold out",), ("in stock",))).relevant
    assert not phrase.evaluate(Change("sold out\nx", "sold out\ny", ("y",), ("x",))).relevant

    regex = parse_rule(r"/back\s+in\s+stock/i")
    verdict = regex.evaluate(Change("gone", "Back in  stock", ("Back in  stock",), ("gone",)))
    assert verdict.relevant and verdict.evidence == ("Back in  stock",)


def test_no_rule_means_any_change() -> None:
    assert parse_rule(None) == AnyChange() == parse_rule("changed")
    assert AnyChange().evaluate(Change("a", "b", ("b",), ("a",))).relevant
    assert not AnyChange().evaluate(Change("a", "a")).relevant


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("price is low", "cannot understand rule"),
        ("/unclosed(/", "invalid regular expression"),
        ("/x/q", "flags"),
        ('""', "empty phrase"),
    ],
)
def test_bad_rules_say_what_would_work(rule: str, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        parse_rule(rule)


@given(st.text(alphabet=st.sampled_from("0123456789 .,'-\u2212\u00a0\n€$kr eE+_/:vRTX"), max_size=80) | st.text())
def test_reading_a_number_never_raises(text: str) -> None:
    number = parse_number(text)
    assert number is None or math.isfinite(number)
    assert Threshold("price", "<", 100).evaluate(Change(None, text)).summary  # and the rule says something


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("89.99\n120.00", 89.99),  # two numbers on two lines are two numbers
        ("Size 42 price 89", 42),  # ... and on one line, when no group of three follows the space
        ("RTX-4090 costs 1599", 1599),  # a hyphenated model name is not minus 4090
        ("v2.0 ships at 15:00 for 30", 30),  # a time is not an amount
        ("1,000,000 visitors", 1_000_000),
        ("12\u2019345.50 CHF", 12345.5),
        ("\u221212 °C", -12),
    ],
)
def test_one_number_at_a_time(text: str, number: float) -> None:
    assert parse_number(text) == number


def test_a_limit_that_is_no_number_is_refused() -> None:
    with pytest.raises(RuleError, match="cannot read"):
        parse_rule("price < " + "9" * 400)


@pytest.mark.parametrize("rule", ["/(a+)+$/", "/(a|aa)+$/"])
def test_a_runaway_regular_expression_is_a_bad_rule_not_a_stuck_worker(rule: str) -> None:
    import time

    started = time.monotonic()
    with pytest.raises(RuleError, match="took over 1s"):
        parse_rule(rule).evaluate(Change(None, "a" * 5000 + "!"))
    assert time.monotonic() - started < 5
