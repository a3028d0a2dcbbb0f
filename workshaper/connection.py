"""Reaching Redis: URLs, user clients, the embedded backend, and clear connection errors."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from workshaper.errors import BackendUnavailable, InvalidType

log = logging.getLogger(__name__)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ****, safe to log or show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:****@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass
class Backend:
    """One Redis server as WorkShaper uses it: a client (bytes replies) and where it points."""

    client: redis.Redis
    where: str  # "host:port" or "embedded"; never holds a password
    embedded: bool = False
    _closed: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self) -> None:
        """Ping the server; raise BackendUnavailable naming host and port if it fails."""
        try:
            self.client.ping()
        except redis.AuthenticationError as exc:
            raise BackendUnavailable(
                f"Redis at {self.where} refused the credentials: {exc}"
            ) from None
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise BackendUnavailable(
                    f"Redis at {self.where} refused the credentials: {exc}"
                ) from None
            raise
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise BackendUnavailable(f"cannot reach Redis at {self.where}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not self.embedded:
            self.client.close()


def _where(kwargs: dict[str, Any]) -> str:
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _bytes_client_like(client: redis.Redis) -> redis.Redis:
    """A client on the same server and settings as ``client`` but returning bytes (WorkShaper
    payloads are binary) and with its own pool, so our blocking calls never starve the user's."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs["decode_responses"] = False
    new_pool = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=new_pool)


def embedded_backend() -> Backend:
    """An in-process Redis (fakeredis with real Lua via lupa): no server needed."""
    import fakeredis  # noqa: PLC0415 - lazily: production servers never load it

    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    return Backend(client=client, where="embedded", embedded=True)


def connect(target: object, *, check: bool = True) -> Backend:
    """Accept a URL, a redis-py client, a Backend, or None (the embedded backend)."""
    backend: Backend
    if target is None:
        return embedded_backend()
    if isinstance(target, Backend):
        return target
    if isinstance(target, str):
        try:
            client = redis.Redis.from_url(
                target, decode_responses=False, socket_keepalive=True, health_check_interval=30
            )
        except ValueError as exc:
            raise BackendUnavailable(f"bad Redis URL {mask_url(target)!r}: {exc}") from None
        backend = Backend(client=client, where=_where(client.connection_pool.connection_kwargs))
    elif isinstance(target, redis.Redis):
        client = _bytes_client_like(target)
        backend = Backend(client=client, where=_where(client.connection_pool.connection_kwargs))
        backend.embedded = type(target).__module__.startswith("fakeredis")
    else:
        raise InvalidType(
            f"redis must be a URL, a redis.Redis client or None, got {type(target).__name__}"
        )
    if check:
        backend.check()
    return backend
