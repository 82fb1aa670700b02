"""Keeping a private local Ray on loopback, whatever was imported first.

Imported by every worker of a local Ray (Ray's ``worker_process_setup_hook``), so it imports only
what a Ray worker has already loaded.
"""

from __future__ import annotations

import ipaddress

LOOPBACK = "127.0.0.1"
ALL_INTERFACES = "[::]:"


def bind_grpc_servers_to_loopback() -> None:
    """Make gRPC servers that Ray code opens on every interface ("[::]:port", e.g. each Serve
    replica's inter-deployment server, which no option moves) listen on loopback instead.

    Runs in each worker before any actor class is loaded, so modules that import the helper by
    name (``from ray._common.tls_utils import add_port_to_grpc_server``) get this version."""
    from ray._common import tls_utils

    original = getattr(tls_utils.add_port_to_grpc_server, "__wrapped__", tls_utils.add_port_to_grpc_server)

    def add_port_on_loopback(server, address):
        if address.startswith(ALL_INTERFACES):
            address = f"{LOOPBACK}:{address[len(ALL_INTERFACES) :]}"
        return original(server, address)

    add_port_on_loopback.__wrapped__ = original  # type: ignore[attr-defined]
    tls_utils.add_port_to_grpc_server = add_port_on_loopback


def is_loopback(ip: str) -> bool:
    """Whether a listening address is reachable from this host only (IPv4-mapped loopback too)."""
    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback
