"""Notifications through Apprise: Slack, Discord, email, ``json://`` and the rest.

Every Apprise URL is parsed and sent by Apprise's own plugin, so the request
is the one Apprise itself would make (``json://host/path?+X-Token=abc&
:message=text&method=PUT`` is a PUT with that header and that key).  Three
guards sit around it:

- the target's host must pass the address policy before the plugin runs
  (that also covers plugins that do not speak HTTP, such as ``mailto://``);
- every connection the plugin's HTTP library (requests, on urllib3) opens
  while it sends, for the first request and every redirect hop, is made to
  an address the policy allows, checked after DNS resolution; urllib3 has no
  hook for this, so its one connection factory is wrapped, and the wrapper
  is inert outside a delivery;
- one deadline covers the whole delivery: when it passes, the sockets the
  delivery opened are shut down, whatever the plugin's own timeouts.

The HTTP statuses the plugin received are kept, so a delivery is transient or
permanent by the same rule as every other call (``pipeline.failures``).
"""

from __future__ import annotations

import contextvars
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import apprise
import requests
import urllib3.util.connection

from pipeline.failures import Delivered, is_transient_status, parse_retry_after
from pipeline.jobs import AlertJob, Told
from pipeline.netguard import AddressPolicy, BlockedAddressError
from pipeline.redact import display_url

if TYPE_CHECKING:
    from pipeline.fetcher import Fetcher


#: Apprise schemes that post to whatever host the URL names: checked strictly.
_ANY_HOST = {"mailto", "mailtos", "xml", "xmls", "form", "forms", "json", "jsons", "apprise", "apprises"}


@dataclass
class _Delivery:
    """What one delivery's connections must respect, and what they saw."""

    policy: AddressPolicy
    sockets: list[socket.socket] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    responses: list[tuple[int, str | None]] = field(default_factory=list)  # (status, Retry-After)
    expired: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def expire(self) -> None:
        with self.lock:
            self.expired = True
            for sock in self.sockets:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # a blocked recv() returns at once


_CURRENT: contextvars.ContextVar[_Delivery | None] = contextvars.ContextVar("pipeline_delivery", default=None)
_create_connection = urllib3.util.connection.create_connection
_session_send = requests.Session.send


def _guarded_create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
    delivery = _CURRENT.get()
    if delivery is None:
        return _create_connection(address, *args, **kwargs)
    host, port = address
    try:
        addresses = delivery.policy.resolve(host.strip("[]"), port)
    except BlockedAddressError as e:
        delivery.blocked.append(str(e))
        raise
    last_error: OSError | None = None
    for ip in addresses:
        with delivery.lock:
            if delivery.expired:
                raise TimeoutError("the delivery's deadline passed")
        try:
            sock = _create_connection((ip, port), *args, **kwargs)
        except OSError as e:
            last_error = e
            continue
        with delivery.lock:
            delivery.sockets.append(sock)
        return sock
    raise last_error or OSError(f"no address for {host}")


def _recording_send(self: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
    response = _session_send(self, request, **kwargs)
    delivery = _CURRENT.get()
    if delivery is not None:
        delivery.responses.append((response.status_code, response.headers.get("retry-after")))
    return response


urllib3.util.connection.create_connection = _guarded_create_connection
requests.Session.send = _recording_send  # type: ignore[method-assign]


@contextmanager
def _guarded(policy: AddressPolicy, seconds: float) -> Iterator[_Delivery]:
    delivery = _Delivery(policy)
    token = _CURRENT.set(delivery)
    timer = threading.Timer(seconds, delivery.expire)
    timer.daemon = True
    timer.start()
    try:
        yield delivery
    finally:
        timer.cancel()
        _CURRENT.reset(token)
        for sock in delivery.sockets:
            with suppress(OSError):
                sock.close()


def _check_host(scheme: str, target: apprise.plugins.NotifyBase, policy: AddressPolicy) -> None:
    host = (getattr(target, "host", None) or "").strip("[]")
    if not host:
        return
    try:
        policy.resolve(host, getattr(target, "port", None) or 443)
    except BlockedAddressError:
        raise
    except (ConnectionError, socket.gaierror, UnicodeError):
        if scheme in _ANY_HOST:  # fail closed: an unresolvable host here is never a service token
            raise BlockedAddressError(f"cannot check the address of {scheme}:// target") from None
        # otherwise the "host" is a service token; the service's own endpoint is public


def send(url: str, finding: Told, job: AlertJob, fetcher: Fetcher) -> Delivered:
    """Deliver one alert to an Apprise URL, within ``fetcher.timeout`` and ``fetcher.policy``."""
    shown = display_url(job["url"]) if job.get("url") else job["source"]
    title = f"[{finding['severity']}] {shown}"
    body = finding["summary"] + ("\n" + "\n".join(map(str, finding["evidence"])) if finding["evidence"] else "")
    scheme = url.split("://", 1)[0].lower()
    target = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if target is None:
        return Delivered(False, error="not a notification URL Apprise knows", transient=False)
    try:
        _check_host(scheme, target, fetcher.policy)
    except BlockedAddressError as e:
        return Delivered(False, error=str(e), transient=False)
    kind = apprise.NotifyType.INFO if finding["severity"] == "info" else apprise.NotifyType.WARNING
    with _guarded(fetcher.policy, fetcher.timeout) as delivery:
        try:
            ok = bool(target.notify(body=body, title=title, notify_type=kind))
        except Exception as e:  # a plugin that raises: its type says why, its message could hold the URL
            ok, error = False, f"{type(e).__name__} in the {scheme}:// notifier"
        else:
            error = ""
    return _outcome(ok, error, delivery)


def _outcome(ok: bool, error: str, delivery: _Delivery) -> Delivered:
    status, retry_after = delivery.responses[-1] if delivery.responses else (None, None)
    if delivery.blocked:
        return Delivered(False, status, delivery.blocked[0], transient=False)
    if delivery.expired:  # cut off: whatever the plugin made of the half answer, it was not delivered in time
        return Delivered(False, status, "timed out: the delivery's deadline passed", transient=True)
    if ok:
        return Delivered(True, status)
    if status is not None and status >= 300:
        transient = is_transient_status(status)
        after = parse_retry_after(retry_after) if transient else None
        return Delivered(False, status, f"HTTP {status}", transient=transient, after=after)
    return Delivered(False, status, error or "the notification service did not accept it", transient=True)
