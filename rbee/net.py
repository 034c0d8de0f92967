"""Addresses and listening sockets, shared by every role (the HTTP servers are rbee.serve)."""

from __future__ import annotations

import errno
import functools
import ipaddress
import socket
import ssl

from rbee.errors import ConfigError, PortInUseError

__all__ = ["bind_tcp", "is_loopback", "plain_http_only"]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.cache
def plain_http_only() -> ssl.SSLContext:
    """The `verify=` for an httpx client that only speaks plain HTTP (to a worker or hive on
    loopback, or through an SSH forward).

    httpx's default loads the CA bundle for every client, 60-70 ms of blocked event loop, paid
    right when a worker becomes ready or a hive's first request goes out. This context trusts no
    CA at all, so a TLS connection through it fails rather than going unverified.
    """
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 picks a free one); PortInUseError if taken."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be 0-65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ConfigError(f"cannot resolve listen address {host!r}: {err}") from err
    family, _, proto, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Streamed tokens are small writes: with Nagle's algorithm on, each waits for the
        # client's delayed ACK (~40 ms). Accepted sockets inherit this on Linux, and asyncio only
        # sets it itself for sockets created with IPPROTO_TCP.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise PortInUseError(host, port) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.set_inheritable(False)
    return sock
