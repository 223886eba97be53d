"""Who is calling: the client's address behind trusted proxies (`gateway/contract/identity.py`)."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.contract.identity import client_address

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


@pytest.mark.parametrize(("peer", "forwarded_for", "trusted", "client"), [
    ("203.0.113.9", "198.51.100.1", (), "203.0.113.9"),  # no proxy is trusted: the peer
    ("203.0.113.9", "198.51.100.1", PROXIES, "203.0.113.9"),  # the peer is no proxy of ours
    ("10.1.2.3", "198.51.100.1", PROXIES, "198.51.100.1"),
    ("10.1.2.3", "198.51.100.1, 10.9.9.9", PROXIES, "198.51.100.1"),  # two of our hops
    ("10.1.2.3", "1.2.3.4, 198.51.100.1", PROXIES, "198.51.100.1"),  # left of it: the client's
    ("::1", "2001:db8::5", PROXIES, "2001:db8::5"),
    ("10.1.2.3", None, PROXIES, "10.1.2.3"),  # the request began at a proxy
    ("10.1.2.3", "10.4.4.4", PROXIES, "10.1.2.3"),
    ("10.1.2.3", "not-an-address", PROXIES, "10.1.2.3"),  # garbage proves nothing
    ("10.1.2.3", "198.51.100.1, junk", PROXIES, "10.1.2.3"),
    (None, None, PROXIES, "unknown"),
])
def test_the_client_is_the_rightmost_hop_that_is_not_ours(
        peer: str | None, forwarded_for: str | None,
        trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], client: str) -> None:
    assert client_address(peer, forwarded_for, trusted) == client
