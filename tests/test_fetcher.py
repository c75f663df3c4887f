"""Fetching: limits, conditional requests, and the SSRF guard, against a real local HTTP server."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from pipeline.failures import parse_retry_after
from pipeline.fetcher import Fetcher, FetchError, TooLargeError
from pipeline.netguard import AddressPolicy, is_public
from tests.site import Page, Site, trickling_server

LOOPBACK_ALLOWED = AddressPolicy.from_entries(["127.0.0.1"])


@pytest.fixture
def site() -> Iterator[Site]:
    with Site() as site:
        yield site


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    fetcher = Fetcher(LOOPBACK_ALLOWED, max_bytes=1024 * 1024, timeout=5)
    yield fetcher
    fetcher.close()


def test_fetches_a_page_with_its_validators(site: Site, fetcher: Fetcher) -> None:
    site.routes["/p"] = Page(b"<p>price 90</p>", headers={"Content-Type": "text/html", "ETag": '"v1"'})
    result = fetcher.fetch(site.url("/p"))
    assert (result.status, result.body, result.etag, result.content_type) == (
        200,
        b"<p>price 90</p>",
        '"v1"',
        "text/html",
    )


def test_conditional_request_gives_not_modified(site: Site, fetcher: Fetcher) -> None:
    def conditional(handler) -> Page:
        if handler.headers.get("If-None-Match") == '"v1"':
            return Page(b"", 304, {"ETag": '"v1"'})
        return Page(b"body", headers={"ETag": '"v1"'})

    site.routes["/c"] = conditional
    assert fetcher.fetch(site.url("/c"), etag='"v1"').not_modified
    assert site.requests[-1][1]["If-None-Match"] == '"v1"'


def test_body_size_is_capped(site: Site, fetcher: Fetcher) -> None:
    site.routes["/big"] = Page(b"x" * (1024 * 1024 + 1))
    with pytest.raises(TooLargeError):
        fetcher.fetch(site.url("/big"))


def test_retry_after_is_honoured(site: Site, fetcher: Fetcher) -> None:
    site.routes["/busy"] = Page(b"", 429, {"Retry-After": "7"})
    with pytest.raises(FetchError) as raised:
        fetcher.fetch(site.url("/busy"))
    assert (raised.value.transient, raised.value.after) == (True, 7)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


def test_redirects_are_followed_and_capped(site: Site, fetcher: Fetcher) -> None:
    site.routes["/a"] = Page(b"", 302, {"Location": "/b"})
    site.routes["/b"] = Page(b"landed")
    assert fetcher.fetch(site.url("/a")).body == b"landed"
    site.routes["/loop"] = Page(b"", 302, {"Location": "/loop"})
    with pytest.raises(FetchError, match="redirects"):
        fetcher.fetch(site.url("/loop"))


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",  # loopback
        "localhost",
        "2130706433",  # 127.0.0.1 in decimal
        "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
        "[::1]",
        "169.254.169.254",  # cloud metadata
        "10.1.2.3",
        "192.168.0.1",
        "100.100.100.200",  # shared address space (a metadata service)
        "0.0.0.0",
    ],
)
def test_private_and_loopback_addresses_are_refused(site: Site, host: str) -> None:
    guarded = Fetcher(AddressPolicy(), timeout=2)
    with pytest.raises(FetchError, match="non-public address"):
        guarded.fetch(f"http://{host}:{site.port}/")
    guarded.close()
    assert site.requests == []  # nothing ever reached the server


def test_a_redirect_to_a_private_address_is_refused(site: Site, fetcher: Fetcher) -> None:
    site.routes["/jump"] = Page(b"", 302, {"Location": "http://169.254.169.254/latest/meta-data/"})
    with pytest.raises(FetchError, match=r"non-public address 169\.254\.169\.254"):
        fetcher.fetch(site.url("/jump"))


def test_only_http_schemes_and_valid_urls(fetcher: Fetcher) -> None:
    with pytest.raises(FetchError, match="only http and https"):
        fetcher.fetch("file:///etc/passwd")
    with pytest.raises(FetchError, match="invalid URL"):
        fetcher.fetch("http://0177.0.0.1/")  # octal: aiohttp refuses it before any lookup


def test_allow_list_takes_hosts_and_networks() -> None:
    policy = AddressPolicy.from_entries(["intranet.example", "10.0.0.0/8", " "])
    assert policy.allows("intranet.example", ipaddress.ip_address("192.168.1.1"))
    assert policy.allows("x", ipaddress.ip_address("10.9.9.9"))
    assert not policy.allows("x", ipaddress.ip_address("192.168.1.1"))
    assert is_public(ipaddress.ip_address("93.184.216.34"))
    assert not is_public(ipaddress.ip_address("64:ff9b::a00:1"))  # NAT64 of 10.0.0.1
    assert not is_public(ipaddress.ip_address("2002:7f00:1::"))  # 6to4 of 127.0.0.1


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        ("2.5", 2.5),  # fractions: servers send them
        ("0", 0.5),  # now, at the floor
        (" 120 ", 120.0),
        ("86400", 3600.0),  # capped: a server asking for a day is down, ask again in an hour
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.5),  # a date in the past is now
        ("-3", None),
        ("soon", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_as_servers_send_it(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=1445412470.0) == seconds


@pytest.mark.parametrize(
    ("status", "transient"),
    [(500, True), (502, True), (503, True), (504, True), (408, True), (429, True),
     (409, True), (400, False), (401, False), (403, False), (404, False), (410, False), (451, False)],
)  # fmt: skip
def test_statuses_are_transient_or_permanent_by_kind(
    site: Site, fetcher: Fetcher, status: int, transient: bool
) -> None:
    site.routes["/s"] = Page(b"", status)
    with pytest.raises(FetchError) as raised:
        fetcher.fetch(site.url("/s"))
    assert (raised.value.transient, raised.value.after) == (transient, None)


def test_connection_errors_and_timeouts_are_transient(fetcher: Fetcher) -> None:
    import socket

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(FetchError) as raised:
        fetcher.fetch(f"http://127.0.0.1:{port}/")
    assert raised.value.transient and raised.value.kind == "connection"


def test_blocked_and_bad_urls_are_permanent(fetcher: Fetcher) -> None:
    for url in ("http://169.254.169.254/latest", "ftp://example.com/x", "http://[::1/", "http://10.0.0.1/"):
        with pytest.raises(FetchError) as raised:
            Fetcher().fetch(url)
        assert not raised.value.transient, url


def test_one_deadline_covers_a_server_that_trickles_headers(fetcher: Fetcher) -> None:
    """The status line, then one header every 0.3 s forever: each read succeeds, the exchange never ends."""
    import time

    short = Fetcher(AddressPolicy.from_entries(["127.0.0.1"]), timeout=1.5)
    started = time.monotonic()
    with trickling_server(0.3) as port, pytest.raises(FetchError) as raised:
        short.fetch(f"http://127.0.0.1:{port}/")
    short.close()
    assert raised.value.kind == "timeout" and raised.value.transient
    assert "timed out after 1.5s" in raised.value.reason
    assert time.monotonic() - started < 5  # one deadline, not 1.5 s per header line


def test_a_refused_connection_and_an_unknown_host_are_said_plainly() -> None:
    from pipeline.nats_server import free_port
    from pipeline.netguard import AddressPolicy

    fetcher = Fetcher(AddressPolicy.from_entries(["127.0.0.1", "nonexistent.invalid"]), timeout=5)
    try:
        with pytest.raises(FetchError) as refused:
            fetcher.fetch(f"http://127.0.0.1:{free_port()}/")
        assert refused.value.transient and refused.value.reason.startswith("cannot connect to http://127.0.0.1:")
        assert "Connect call failed" in refused.value.reason or "refused" in refused.value.reason.lower()
        with pytest.raises(FetchError) as unknown:
            fetcher.fetch("http://nonexistent.invalid/")
        assert unknown.value.reason.startswith("cannot resolve the host of http://nonexistent.invalid/")
    finally:
        fetcher.close()
