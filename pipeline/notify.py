"""Notifications through Apprise: Slack, Discord, email, ``json://`` and the rest.

Apprise makes its own connections, so the address policy is applied to the
target's host first: a ``json://`` or ``mailto://`` URL pointing at a
private address is refused as a fetch would be.  Service URLs whose "host"
is a token (``slack://T000/B000/XXX``) do not resolve and go to the
service's own public endpoint.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import apprise

from pipeline.netguard import AddressPolicy, BlockedAddressError

if TYPE_CHECKING:
    from pipeline.models import Finding


def _check_host(target: apprise.plugins.NotifyBase, policy: AddressPolicy) -> None:
    host = getattr(target, "host", None)
    if not host:
        return
    try:
        policy.resolve(host, getattr(target, "port", None) or 443)
    except BlockedAddressError:
        raise
    except (ConnectionError, socket.gaierror):
        return  # not a host name: a service token; the service's own endpoint is public


def send(url: str, finding: Finding, job: dict[str, Any], policy: AddressPolicy) -> tuple[bool, int | None, str]:
    """Deliver one alert to an Apprise URL: (ok, status code if any, error)."""
    target = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if target is None:
        return False, None, "not a notification URL Apprise knows"
    try:
        _check_host(target, policy)
    except BlockedAddressError as e:
        return False, None, str(e)
    title = f"[{finding.severity}] {job.get('url') or job['source']}"
    body = finding.summary + ("\n" + "\n".join(map(str, finding.evidence)) if finding.evidence else "")
    ok = bool(target.notify(body=body, title=title))
    return ok, None, "" if ok else "the notification service did not accept it"
