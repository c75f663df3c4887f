"""Which addresses the fetcher may connect to (server-side request forgery guard).

Monitors name arbitrary URLs, so a URL must never reach the metadata
service, localhost or the private network the workers run in.  The check
runs on the resolved IP address at connect time, for every connection,
including each redirect hop, so DNS tricks (a name resolving to 127.0.0.1,
decimal ``2130706433``, ``[::ffff:127.0.0.1]``, rebinding) do not get round it.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: NAT64's well-known prefix carries an IPv4 address in its last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddressError(ConnectionError):
    """The destination is private, loopback, link-local, metadata or otherwise not public."""


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, Teredo, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    inner = embedded_ipv4(ip)
    if inner is not None:
        return is_public(inner)
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses only, plus an allow-list of hosts and networks.

    ``PIPELINE_FETCH_ALLOW_HOSTS`` holds the allow-list: comma-separated
    host names (``intranet.example``) or networks (``10.0.0.0/8``,
    ``127.0.0.1``).
    """

    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> AddressPolicy:
        hosts, networks = set(), []
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, ip: IPAddress) -> bool:
        if host.lower().rstrip(".") in self.allowed_hosts:
            return True
        if any(ip in network for network in self.allowed_networks if network.version == ip.version):
            return True
        return is_public(ip)

    def check_literal(self, host: str) -> None:
        """``resolve`` for a host that is a literal IP address, without asking the resolver (it would
        only echo the address back); raises ``BlockedAddressError`` as ``resolve`` does."""
        try:
            allowed = _literal_allowed(self, host)
        except ValueError:  # not one after all (the caller's test is looser): the resolver decides
            self.resolve(host, 0)
            return
        if not allowed:
            raise BlockedAddressError(
                f"refusing to connect to non-public address {host} (allow it with PIPELINE_FETCH_ALLOW_HOSTS)"
            )

    def refuses_unresolved(self, host: str) -> bool:
        """Whether ``host`` is refused as written, without asking the resolver: a literal address the
        policy does not allow, or a ``localhost`` name (loopback by RFC 6761) it does not allow.  False
        for any other name, which only resolving can tell."""
        name = host.lower().rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):
            return not self.allows(name, ipaddress.IPv4Address("127.0.0.1"))
        try:
            return not _literal_allowed(self, host)
        except ValueError:  # a name
            return False

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` that may be connected to; ``BlockedAddressError`` if none may."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise ConnectionError(f"cannot resolve {host!r}: {e}") from None
        addresses = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if not self.allows(host, ip):
                raise BlockedAddressError(
                    f"refusing to connect to {host!r}: it resolves to non-public address {ip}"
                    " (allow it with PIPELINE_FETCH_ALLOW_HOSTS)"
                )
            addresses.append(str(ip))
        return addresses


@functools.lru_cache(maxsize=1024)
def _literal_allowed(policy: AddressPolicy, host: str) -> bool:
    """Whether ``policy`` allows the literal address ``host``; ``ValueError`` if it is none."""
    return policy.allows(host, ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))
