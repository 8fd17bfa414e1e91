"""Which addresses an Endpoint URL may reach (contract section 14).

Cloud metadata services and link-local addresses are refused, both as written in the URL (at save) and as the host
name resolves each time a connection is opened (so a name that resolves somewhere else later, DNS rebinding, is
caught too). Loopback and private addresses stay allowed: they are local emulators and VPC endpoints.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from botocore.awsrequest import AWSHTTPConnection, AWSHTTPConnectionPool, AWSHTTPSConnection, AWSHTTPSConnectionPool

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REFUSED_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "169.254.0.0/16",  # IPv4 link-local, where the AWS, GCP and Azure metadata services answer
        "100.100.100.200/32",  # Alibaba Cloud's metadata service
        "0.0.0.0/8",  # "this host": connecting to it reaches the host's own services
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # the AWS metadata service over IPv6
        "::/128",  # unspecified
    )
)


class EndpointRefused(Exception):
    """The endpoint's host is, or resolves to, an address that may not be reached."""


def address_refused(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in REFUSED_NETWORKS if network.version == address.version)


def literal_address(host: str) -> IPAddress | None:
    """The address a host written as an IP address stands for, in any form the resolver accepts (169.254.169.254,
    2852039166, 0xA9FEA9FE, [::ffff:a9fe:a9fe], ...); None for a host name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def endpoint_url_error(url: str) -> str | None:
    """Why an Endpoint URL may not be saved, or None."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return "Not a valid URL."
    address = literal_address(host)
    if address is not None and address_refused(address):
        return f"May not point at a cloud metadata or link-local address ({address})."
    return None


def resolved_address(host: str, port: int) -> str:
    """Resolve `host` and return the address to connect to; EndpointRefused when any of its addresses is refused."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return host  # the connection attempt reports the resolution error in its own words
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    refused = [address for address in addresses if address_refused(address)]
    if refused:
        raise EndpointRefused(
            f"The endpoint's host {host} resolves to {refused[0]}, a cloud metadata or link-local address."
        )
    return str(addresses[0])


class _CheckedConnection:
    """Opens its socket to the address it checked, so that a second resolution cannot lead elsewhere; the Host
    header and TLS keep the host name."""

    _dns_host: str
    port: int

    def _new_conn(self):
        name = self._dns_host
        self._dns_host = resolved_address(name, self.port)
        try:
            return super()._new_conn()
        finally:
            self._dns_host = name


class CheckedHTTPConnection(_CheckedConnection, AWSHTTPConnection):
    pass


class CheckedHTTPSConnection(_CheckedConnection, AWSHTTPSConnection):
    pass


class CheckedHTTPConnectionPool(AWSHTTPConnectionPool):
    ConnectionCls = CheckedHTTPConnection


class CheckedHTTPSConnectionPool(AWSHTTPSConnectionPool):
    ConnectionCls = CheckedHTTPSConnection


CHECKED_POOLS = {"http": CheckedHTTPConnectionPool, "https": CheckedHTTPSConnectionPool}


def client_connections_checked(client) -> None:
    """Make a boto3 client check the address of every connection it opens. botocore offers no setting for its
    connection class, so the client's pool classes are replaced (botocore is pinned;
    tests/integrations/test_endpoints.py would catch a change)."""
    session = client._endpoint.http_session
    session._pool_classes_by_scheme = CHECKED_POOLS
    session._manager.pool_classes_by_scheme = CHECKED_POOLS
