"""The one place that opens a server's TCP socket (shard, router, router workers and their supervisor)."""

from __future__ import annotations

import socket


def bound_tcp_socket(
    host: str, port: int, *, reuse_port: bool = False, no_delay: bool = False
) -> socket.socket:
    """A TCP socket bound to (host, port), not listening yet: the caller listens when it is ready to
    accept. IPv6 when the host has a colon. SO_REUSEADDR always (a restart must not wait out
    TIME_WAIT); SO_REUSEPORT for router workers that each bind the same port; TCP_NODELAY, which
    accepted sockets inherit, where a response written as headers + body must not wait for the
    client's delayed ACK (40 ms per keep-alive request, seen with the asyncio loop). The socket is
    closed when the bind fails, and the OSError is raised for the caller to name the flag."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if no_delay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
