"""Reaching Redis: URLs, user clients, the embedded backend, and clear connection errors.

URL forms (README "Connecting to Redis"):

- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix:///path``;
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]`` and
  ``rediss+sentinel://...`` (TLS to the sentinels and the primary), through redis-py's
  ``Sentinel.master_for``: every new connection asks the sentinels where the primary is;
- ``redis+cluster://[[user]:password@]host:port[,host:port...]`` and ``rediss+cluster://...``
  (TLS): a Redis Cluster, through redis-py's ``RedisCluster`` (its slot map; batches are sent
  per node by ``batch.py``). The hosts are only where to start: the client learns every node.

Query parameters are redis-py's names: ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_cert_reqs`` (TLS), ``socket_timeout`` and the others redis-py parses, plus
``sentinel_username`` / ``sentinel_password`` (the sentinels' own credentials). Unknown names
are refused with an error naming them. Passwords and the TLS key path are secrets: ``mask_url``
hides them, and no error or repr of this module shows them.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import redis
import redis.cluster
import redis.exceptions
import redis.sentinel

from workshaper.errors import AccessDenied, BackendUnavailable, InvalidType

if TYPE_CHECKING:
    from workshaper.embedded import EmbeddedServer

log = logging.getLogger(__name__)

MASK = "****"

#: Query parameters whose values are secrets: never shown.
SECRET_PARAMS = frozenset({"password", "sentinel_password", "ssl_keyfile", "ssl_password"})

#: The TLS query parameters (redis-py's names); they need a ``rediss`` scheme.
TLS_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_TLS_EXTRA = ("ssl_check_hostname", "ssl_ca_path", "ssl_password", "ssl_min_version")
_CERT_REQS = ("none", "optional", "required")


def _number(
    kind: Callable[[str], float], low: float, *, above: bool = False
) -> Callable[[str], Any]:
    """A parser of a number >= ``low`` (> ``low`` with ``above``), finite: NaN, infinity or a
    negative timeout would fail much later, inside a socket call, as some other error."""

    def parse(text: str) -> float:
        value = kind(text)
        if not math.isfinite(value) or value < low or (above and value == low):
            raise ValueError(text)
        return value

    return parse


def _client_name(text: str) -> str:
    """Redis refuses client names with spaces, newlines or other special characters."""
    if not all("!" <= c <= "~" for c in text):
        raise ValueError(text)
    return text


def _protocol(text: str) -> int:
    if text not in ("2", "3"):
        raise ValueError(text)
    return int(text)


#: Query parameters accepted in every URL (redis-py parses them; typed ones are converted and
#: checked here, so a bad value is named now rather than failing in the first connection).
_PLAIN_PARAMS: dict[str, Callable[[str], Any]] = {
    "db": _number(int, 0),
    "socket_timeout": _number(float, 0, above=True),
    "socket_connect_timeout": _number(float, 0, above=True),
    "socket_keepalive": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "health_check_interval": _number(int, 0),
    "max_connections": _number(int, 1),
    "client_name": _client_name,
    "username": str,
    "password": str,
    "protocol": _protocol,
}
_SENTINEL_PARAMS = ("sentinel_username", "sentinel_password")

SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)


def _mask_netloc(netloc: str) -> str:
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return netloc
    user, colon, _password = userinfo.partition(":")
    return f"{user}:{MASK}@{hosts}" if colon else netloc


#: What may be user info (user:password@) in a URL urlsplit could not split.
_USERINFO = re.compile(r"^([^/@]*//)?[^/@]*@")


def mask_url(url: str) -> str:
    """The URL with its password and secret query values (passwords, the TLS key path)
    replaced by ****, safe to log or show."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if not parts.netloc and "@" in url:  # no scheme, so urlsplit saw no user info: hide it
        return _USERINFO.sub(rf"\1{MASK}@", url, count=1)
    netloc = _mask_netloc(parts.netloc)
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        # backslashreplace: a URL with a lone surrogate is shown, not a UnicodeEncodeError.
        show = partial(quote, errors="backslashreplace")
        query = "&".join(
            f"{show(k)}={MASK if k in SECRET_PARAMS else show(v, safe='/')}" for k, v in pairs
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True)
class TLSFiles:
    """TLS settings given apart from the URL (CLI flags, environment): added to a URL's query
    by ``with_tls``. The key file's path is a secret: it is not in the repr."""

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = field(default=None, repr=False)
    cert_reqs: str | None = None

    def params(self) -> dict[str, str]:
        values = (self.ca_certs, self.certfile, self.keyfile, self.cert_reqs)
        return {k: v for k, v in zip(TLS_PARAMS, values, strict=True) if v}


def with_tls(url: str, tls: TLSFiles) -> str:
    """``url`` with the TLS settings of ``tls`` in its query. A setting that the URL already
    has with another value is an error (which one should win is not ours to guess)."""
    extra = tls.params()
    if not extra:
        return url
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    have = dict(pairs)
    for name, value in extra.items():
        if name in have and have[name] != value:
            shown = MASK if name in SECRET_PARAMS else repr(have[name])
            raise BackendUnavailable(
                f"{name} is given twice: in the Redis URL ({shown}) and as a TLS option"
            )
    pairs += [(k, v) for k, v in extra.items() if k not in have]
    return urlunsplit(parts._replace(query=urlencode(pairs)))


#: Error replies that mean "not now", not "wrong": the server is loading, busy, or failing over
#: (a demoted primary answers READONLY). redis-py strips the code from most of these messages
#: and keeps it in ``status_code``.
TRANSIENT_ERROR_CODES = frozenset(
    {"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY", "CLUSTERDOWN"}
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth waiting out and retrying: a lost or timed-out connection, or a
    server that cannot answer right now. Wrong credentials and ACL denials are not."""
    if isinstance(exc, redis.AuthenticationError):
        return False
    if isinstance(exc, redis.exceptions.RedisClusterException):
        # The cluster client found no reachable node or no owner of a slot: a failover or a
        # migration under way (our commands never span slots, the other cause of this error).
        return True
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
        return True
    if isinstance(exc, redis.ResponseError):
        code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
        return code in TRANSIENT_ERROR_CODES
    return False


@dataclass
class Backend:
    """One Redis server (or cluster) as WorkShaper uses it: a client (bytes replies) and where
    it points. On a cluster ``client`` is a ``redis.RedisCluster`` (typed as ``redis.Redis``:
    it has the same command methods; the code that needs connections checks ``cluster``)."""

    client: redis.Redis = field(repr=False)
    where: str  # "host:port", "unix:/path", "sentinel ...", "cluster ..." or "embedded"; no secret
    embedded: bool = False
    #: The in-process server of an embedded backend (its batches skip redis-py entirely).
    server: EmbeddedServer | None = None
    cluster: bool = False
    #: False for fakeredis, whose EVAL does not parse a ``#!lua`` shebang: it gets the scripts
    #: without it (lua_scripts.LuaScript.plain).
    shebangs: bool = True
    _closed: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _also_close: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def check(self) -> None:
        """Ping the server; raise BackendUnavailable naming host and port if it fails."""
        try:
            self.client.ping()
        except redis.AuthenticationError as exc:
            raise BackendUnavailable(
                f"Redis at {self.where} refused the credentials: {exc}"
            ) from None
        except redis.exceptions.NoPermissionError as exc:
            raise access_denied(self, exc) from None
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise BackendUnavailable(
                    f"Redis at {self.where} refused the credentials: {exc}"
                ) from None
            # The connection's setup (SELECT of a database, CLIENT SETNAME, HELLO) refused.
            raise BackendUnavailable(
                f"Redis at {self.where} refused the connection: {exc}"
            ) from None
        except (
            redis.ConnectionError,
            redis.TimeoutError,
            OSError,
            redis.exceptions.RedisClusterException,
        ) as exc:
            raise BackendUnavailable(f"cannot reach Redis at {self.where}: {exc}") from None
        except (ValueError, OverflowError) as exc:  # e.g. a host name IDNA cannot encode
            raise BackendUnavailable(
                f"cannot connect to Redis at {self.where} with these settings: {exc}"
            ) from None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not self.embedded:
            self.client.close()
        for close in self._also_close:
            close()


def access_denied(backend: Backend, exc: BaseException) -> AccessDenied:
    """The error for an ACL denial (NOPERM): what was refused, and where."""
    return AccessDenied(
        f"Redis at {backend.where} denied access: {exc} "
        "(check the user's ACL: `workshaper acl --help`)"
    )


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
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        kwargs.pop("connection_pool", None)  # the old pool's proxy; the new pool sets its own
        new_pool: redis.ConnectionPool = redis.sentinel.SentinelConnectionPool(  # type: ignore[no-untyped-call]
            pool.service_name,
            pool.sentinel_manager,
            connection_class=pool.connection_class,
            is_master=pool.is_master,
            check_connection=pool.check_connection,
            **kwargs,
        )
    else:
        new_pool = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=new_pool)


def _client_where(client: redis.Redis) -> str:
    pool = client.connection_pool
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        return _sentinel_where(pool.service_name, pool.sentinel_manager)
    return _where(pool.connection_kwargs)


def _sentinel_where(service: str, sentinel: redis.sentinel.Sentinel) -> str:
    hosts = ",".join(_where(s.connection_pool.connection_kwargs) for s in sentinel.sentinels)
    return f"sentinel service {service!r} via {hosts}"


def embedded_backend(server: EmbeddedServer | None = None) -> Backend:
    """An in-process Redis running our Lua scripts (workshaper.embedded): no server needed.
    Without ``server``, a private one that nothing else sees."""
    from workshaper.embedded import EmbeddedServer  # noqa: PLC0415 - lazily: servers never use it

    if server is None:
        server = EmbeddedServer()
    return Backend(client=server.client(), where="embedded", embedded=True, server=server)


def fakeredis_backend(server: Any = None) -> Backend:
    """The former embedded backend (fakeredis with real Lua via lupa), kept as a fallback and
    as a second reference for tests."""
    import fakeredis  # noqa: PLC0415 - lazily: production servers never load it

    client = fakeredis.FakeRedis(server=server or fakeredis.FakeServer())
    return Backend(client=client, where="embedded", embedded=True, shebangs=False)


_shared_server: EmbeddedServer | None = None
_shared_server_lock = threading.Lock()


def shared_embedded_backend() -> Backend:
    """A client of the process's one embedded server: what ``None`` means for a Producer, a
    Worker or an Admin, so that a ``Producer(None)`` and a ``Worker(None)`` of one process work
    together as clients of one Redis would."""
    global _shared_server  # one server per process, made on first use
    from workshaper.embedded import EmbeddedServer  # noqa: PLC0415 - lazily: servers never use it

    with _shared_server_lock:
        if _shared_server is None:
            _shared_server = EmbeddedServer()
        return embedded_backend(_shared_server)


def connect(target: object, *, check: bool = True) -> Backend:
    """Accept a URL, a redis-py client, a Backend, or None (the process's embedded backend)."""
    backend: Backend
    if target is None:
        return shared_embedded_backend()
    if isinstance(target, Backend):
        return target
    if isinstance(target, str):
        backend = backend_from_url(target)
    elif isinstance(target, redis.RedisCluster):
        backend = _cluster_backend_like(target)
    elif isinstance(target, redis.Redis):
        client = _bytes_client_like(target)
        backend = Backend(client=client, where=_client_where(client))
        backend.embedded = type(target).__module__.startswith("fakeredis")
        backend.shebangs = not backend.embedded
    else:
        raise InvalidType(
            "redis must be a URL, a redis.Redis or redis.RedisCluster client or None, got "
            f"{type(target).__name__}"
        )
    if check:
        backend.check()
    return backend


# --- URLs ---------------------------------------------------------------------------------------


def _bad(url: str, why: str) -> BackendUnavailable:
    return BackendUnavailable(f"bad Redis URL {mask_url(url)!r}: {why}")


def _query_options(url: str, scheme: str, query: str) -> dict[str, Any]:
    """The URL's query parameters as client keyword arguments, each checked."""
    tls = scheme.startswith("rediss")
    allowed = set(_PLAIN_PARAMS) | set(TLS_PARAMS) | set(_TLS_EXTRA)
    if scheme.endswith("+sentinel"):
        allowed |= set(_SENTINEL_PARAMS)
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in allowed:
            raise _bad(
                url, f"unknown query parameter {name!r} (known: {', '.join(sorted(allowed))})"
            )
        if (name in TLS_PARAMS or name in _TLS_EXTRA) and not tls:
            secure = {"redis+sentinel": "rediss+sentinel", "redis+cluster": "rediss+cluster"}.get(
                scheme, "rediss"
            )
            raise _bad(url, f"{name} needs TLS: use a {secure}:// URL")
        parse = _PLAIN_PARAMS.get(name, str)
        if name == "ssl_check_hostname":
            parse = _PLAIN_PARAMS["socket_keepalive"]
        elif name == "ssl_min_version":
            parse = int
        try:
            options[name] = parse(value)
        except ValueError:
            shown = MASK if name in SECRET_PARAMS else repr(value)
            raise _bad(url, f"{name}={shown} is not valid") from None
    if tls:
        _check_tls_files(url, options)
    return options


def _check_tls_files(url: str, options: dict[str, Any]) -> None:
    """Name a missing CA or certificate file now, not as an SSL error at the first command.
    The key file's path is a secret, so its error says which setting, not which path."""
    reqs = options.get("ssl_cert_reqs")
    if reqs is not None and reqs not in _CERT_REQS:
        raise _bad(url, f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}, got {reqs!r}")
    for name in ("ssl_ca_certs", "ssl_certfile"):
        path = options.get(name)
        if path is not None and not os.access(path, os.R_OK):
            raise _bad(url, f"{name} file {path!r} does not exist or cannot be read")
    keyfile = options.get("ssl_keyfile")
    if keyfile is not None:
        if not os.access(keyfile, os.R_OK):
            raise _bad(url, "the ssl_keyfile (TLS key) file does not exist or cannot be read")
        if options.get("ssl_certfile") is None:
            raise _bad(url, "ssl_keyfile needs ssl_certfile (the certificate of that key)")
    ca_path = options.get("ssl_ca_path")
    if ca_path is not None and not os.path.isdir(ca_path):
        raise _bad(url, f"ssl_ca_path {ca_path!r} is not a directory")


def backend_from_url(url: str) -> Backend:
    """A Backend for one of the URL forms of the module docstring (not yet checked)."""
    try:
        url.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _bad(url, f"it is not valid UTF-8 text ({exc.reason} at index {exc.start})") from None
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _bad(url, str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise _bad(url, f"the scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
    options = _query_options(url, scheme, parts.query)
    if scheme.endswith("+sentinel"):
        return _sentinel_backend(url, scheme, parts.netloc, parts.path, options)
    if scheme.endswith("+cluster"):
        return _cluster_backend(url, scheme, parts.netloc, parts.path, options)
    defaults: dict[str, Any] = {"decode_responses": False, "health_check_interval": 30}
    if scheme != "unix":  # a unix socket connection takes no TCP keepalive
        defaults["socket_keepalive"] = True
    try:
        client = redis.Redis.from_url(url, **defaults)
    except ValueError as exc:
        raise _bad(url, str(exc)) from None
    where = _where(client.connection_pool.connection_kwargs)
    if scheme == "rediss":
        where += " (TLS)"
    return Backend(client=client, where=where)


def _host_list(url: str, hostlist: str, default_port: str) -> list[tuple[str, int]]:
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = port, default_port
        host = host.strip("[]")  # an IPv6 address in brackets
        if not host or not port.isdigit():
            raise _bad(url, f"address {item!r} is not host:port")
        hosts.append((host, int(port)))
    return hosts


def _set_credentials(userinfo: str, options: dict[str, Any]) -> None:
    """Take username and password from a URL's ``user:password`` part (either may be absent)
    into the connection options."""
    user, colon, password = userinfo.partition(":")
    if user:
        options["username"] = unquote(user)
    if colon:
        options["password"] = unquote(password)


def _cluster_backend(
    url: str, scheme: str, netloc: str, path: str, options: dict[str, Any]
) -> Backend:
    userinfo, _, hostlist = netloc.rpartition("@")
    nodes = _host_list(url, hostlist, "6379")
    if path.strip("/"):
        raise _bad(url, "a cluster URL has no path: Redis Cluster has only database 0")
    if "db" in options:
        raise _bad(url, "a cluster URL takes no db: Redis Cluster has only database 0")
    _set_credentials(userinfo, options)
    if scheme == "rediss+cluster":
        options["ssl"] = True
    kwargs: dict[str, Any] = {
        "decode_responses": False,
        "health_check_interval": 30,
        "socket_keepalive": True,
        **options,
    }
    where = "cluster " + ",".join(f"{h}:{p}" for h, p in nodes)
    if scheme == "rediss+cluster":
        where += " (TLS)"
    return _new_cluster_backend(nodes, kwargs, where)


def _new_cluster_backend(
    nodes: list[tuple[str, int]], kwargs: dict[str, Any], where: str
) -> Backend:
    """redis-py's RedisCluster connects (and reads the slot map) as it is made: its failures
    become the same clear errors as a single server's."""
    startup = [redis.cluster.ClusterNode(h, p) for h, p in nodes]  # type: ignore[no-untyped-call]
    try:
        client = redis.RedisCluster(startup_nodes=startup, **kwargs)
    except redis.AuthenticationError as exc:
        raise BackendUnavailable(f"Redis at {where} refused the credentials: {exc}") from None
    except (
        redis.exceptions.RedisClusterException,
        redis.ConnectionError,
        redis.TimeoutError,
        OSError,
    ) as exc:
        hint = ""
        if "not enabled" in str(exc):  # also what redis-py says when CLUSTER SLOTS is denied
            hint = " (if it is a cluster: may the user run CLUSTER SLOTS? `workshaper acl --help`)"
        raise BackendUnavailable(f"cannot reach a Redis Cluster at {where}: {exc}{hint}") from None
    return Backend(client=cast(redis.Redis, client), where=where, cluster=True)


def _cluster_backend_like(client: redis.RedisCluster) -> Backend:
    """A cluster client with the settings of the user's ``client`` but returning bytes and with
    its own connections (so our blocking calls never starve the user's)."""
    kwargs = dict(client.nodes_manager.connection_kwargs)
    for name in ("host", "port", "connection_pool", "connection_class"):
        kwargs.pop(name, None)
    kwargs["decode_responses"] = False
    nodes = [(n.host, int(n.port)) for n in client.get_primaries()]  # type: ignore[no-untyped-call]
    where = "cluster " + ",".join(f"{h}:{p}" for h, p in nodes)
    return _new_cluster_backend(nodes, kwargs, where)


def _sentinel_backend(
    url: str, scheme: str, netloc: str, path: str, options: dict[str, Any]
) -> Backend:
    userinfo, _, hostlist = netloc.rpartition("@")
    sentinels: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = port, "26379"
        host = host.strip("[]")  # an IPv6 address in brackets
        if not host or not port.isdigit():
            raise _bad(url, f"sentinel address {item!r} is not host:port")
        sentinels.append((host, int(port)))
    segments = [unquote(s) for s in path.split("/") if s]
    if not segments or len(segments) > 2:
        raise _bad(url, "the path must be /service_name or /service_name/db")
    service = segments[0]
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise _bad(url, f"the database {segments[1]!r} is not a number")
        options["db"] = int(segments[1])
    _set_credentials(userinfo, options)
    tls = {k: options[k] for k in (*TLS_PARAMS, *_TLS_EXTRA) if k in options}
    if scheme == "rediss+sentinel":
        tls["ssl"] = True
    sentinel_kwargs: dict[str, Any] = {
        k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options
    }
    sentinel_kwargs.update(tls)  # TLS to the sentinels too, with the same files
    if "sentinel_username" in options:
        sentinel_kwargs["username"] = options.pop("sentinel_username")
    if "sentinel_password" in options:
        sentinel_kwargs["password"] = options.pop("sentinel_password")
    master_kwargs: dict[str, Any] = {
        "decode_responses": False,
        "health_check_interval": 30,
        "socket_keepalive": True,
        **options,
        **tls,
    }
    # Called through Any: redis-py types Sentinel's methods only from 8.x on, so an ignore
    # comment for the untyped releases is an error under the typed ones (and the reverse).
    sentinel_type: Any = redis.sentinel.Sentinel
    sentinel = sentinel_type(sentinels, sentinel_kwargs=sentinel_kwargs)
    client = sentinel.master_for(service, **master_kwargs)
    where = _sentinel_where(service, sentinel)
    if scheme == "rediss+sentinel":
        where += " (TLS)"
    return Backend(client=client, where=where, _also_close=[sentinel.close])
