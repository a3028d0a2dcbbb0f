"""The private redis-server of tests and the chaos harness: a restart on the same port must not
fail because something holds the port for a moment (a client reconnecting while the server is
down can hold it: TCP self-connect when the port lies in the ephemeral range)."""

from __future__ import annotations

import socket
import threading

from workshaper_tools.testing.redis_server import RedisServer, ephemeral_ports, free_port


def test_free_ports_lie_outside_the_ephemeral_range() -> None:
    for _ in range(20):
        assert free_port() not in ephemeral_ports()


def test_a_start_waits_for_a_port_held_for_a_moment() -> None:
    server = RedisServer()
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", server.port))
    holder.listen()
    release = threading.Timer(1.0, holder.close)
    release.start()
    try:
        server.start(timeout=30)
        with server.client() as client:
            assert client.ping()
    finally:
        release.cancel()
        holder.close()
        server.stop()
