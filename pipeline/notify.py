"""Notifications through Apprise: Slack, Discord, email, ``json://`` and the rest.

``json://``/``jsons://`` are posted by our own guarded client (no
redirects, nothing read back).  For the rest Apprise makes its own
connections, so the address policy is applied to the target's host first:
a ``mailto://`` or ``xml://`` URL pointing at a private address, or one
whose host cannot be checked, is refused.  Service URLs whose "host" is a
token (``slack://T000/B000/XXX``) go to the service's own public endpoint.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import apprise
import httpx

from pipeline.netguard import AddressPolicy, BlockedAddressError

if TYPE_CHECKING:
    from pipeline.fetcher import Fetcher
    from pipeline.models import Finding


#: Apprise schemes that post to whatever host the URL names: checked strictly.
_ANY_HOST = {"mailto", "mailtos", "xml", "xmls", "form", "forms"}


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


def _post_json(client: httpx.Client, url: str, title: str, body: str, severity: str) -> tuple[bool, int | None, str]:
    """``json://`` and ``jsons://`` as Apprise defines them, through our guarded client (no redirects)."""
    http_url = ("https://" if url.startswith("jsons://") else "http://") + url.split("://", 1)[1]
    payload = {"version": "1.0", "title": title, "message": body, "type": severity}
    try:
        with client.stream("POST", http_url, json=payload) as response:
            status = response.status_code
    except BlockedAddressError as e:  # names the host only
        return False, None, str(e)
    except Exception as e:
        return False, None, f"{type(e).__name__} posting to json://…"
    ok = 200 <= status < 300
    return ok, status, "" if ok else f"HTTP {status}"


def send(url: str, finding: Finding, job: dict[str, Any], fetcher: Fetcher) -> tuple[bool, int | None, str]:
    """Deliver one alert to an Apprise URL: (ok, status code if any, error)."""
    title = f"[{finding.severity}] {job.get('url') or job['source']}"
    body = finding.summary + ("\n" + "\n".join(map(str, finding.evidence)) if finding.evidence else "")
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("json", "jsons"):
        return _post_json(fetcher.client, url, title, body, "warning" if finding.severity != "info" else "info")
    target = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if target is None:
        return False, None, "not a notification URL Apprise knows"
    try:
        _check_host(scheme, target, fetcher.policy)
    except BlockedAddressError as e:
        return False, None, str(e)
    ok = bool(target.notify(body=body, title=title))
    return ok, None, "" if ok else "the notification service did not accept it"
