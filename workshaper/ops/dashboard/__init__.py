"""``workshaper dashboard``: a web page over the operator view (extra ``workshaper[dashboard]``).

Starlette serves one static page (plain HTML, CSS and JavaScript: no build step, no node) and
a small JSON API; the page follows a namespace live over server-sent events
(``/api/events``), one snapshot per interval. Reads are those of ``workshaper status``: a few
commands per partition per interval, never a scan of the sub keys (the namespace list is the one
SCAN, on demand). Actions (replay and drop a dead letter, retry or dead-letter a blocked sub
key) answer 403 unless the dashboard was started with ``--allow-actions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import redis

from workshaper import codec
from workshaper.admin import Admin
from workshaper.connection import Backend, connect, mask_url
from workshaper.errors import InvalidInput, InvalidType
from workshaper.ops.inspection import (
    DEFAULT_STUCK_AFTER,
    DeadLetter,
    Inspector,
    PartitionView,
    namespaces,
    parse_sub_key,
    sub_key_kind,
    sub_key_text,
)

try:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import (
        HTMLResponse,
        JSONResponse,
        Response,
        StreamingResponse,
    )
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("the dashboard needs the extra: pip install 'workshaper[dashboard]'") from exc

log = logging.getLogger(__name__)

#: Dead letters sent to the page per snapshot (the CLI lists them all).
DEAD_LETTER_LIMIT = 100
#: Dead letters are read again at least this often (seconds), counts unchanged or not.
DEAD_LETTER_REFRESH = 10.0
#: How long a replay from the page waits for the item's outcome.
REPLAY_WAIT = 10.0


class DashboardState:
    """One Redis connection pool shared by every namespace's Inspector and Admin."""

    def __init__(
        self,
        redis: Any,
        namespace: str | None,
        allow_actions: bool,
        interval: float,
        stuck_after: float = DEFAULT_STUCK_AFTER,
    ) -> None:
        self.backend: Backend = connect(redis)
        self.where = mask_url(redis) if isinstance(redis, str) else self.backend.where
        self.default_namespace = namespace
        self.allow_actions = allow_actions
        self.interval = interval
        self.stuck_after = stuck_after
        self._inspectors: dict[str, Inspector] = {}
        #: namespace -> (dead-letter count per partition, the letters read for those counts)
        self._dead_cache: dict[
            str, tuple[tuple[tuple[int, int], ...], float, list[DeadLetter]]
        ] = {}
        self._lock = threading.Lock()

    def inspector(self, namespace: str) -> Inspector:
        codec.check_namespace(namespace)
        with self._lock:
            found = self._inspectors.get(namespace)
            if found is None:
                found = self._inspectors[namespace] = Inspector(self.backend, namespace)
            return found

    def namespaces(self) -> list[str]:
        try:
            found = namespaces(self.backend)
        except redis.exceptions.ResponseError:  # no SCAN under this user's ACL
            found = []
        if self.default_namespace and self.default_namespace not in found:
            found.insert(0, self.default_namespace)
        return found

    def snapshot(self, namespace: str) -> dict[str, Any]:
        inspector = self.inspector(namespace)
        snap = inspector.snapshot(self.stuck_after)
        letters = self._dead_letters(namespace, inspector, snap.partitions)
        out = snap.to_json()
        out["dead_letters"] = [d.to_json() for d in letters]
        out["dead_letters_total"] = sum(p.dead_letters for p in snap.partitions)
        out["blocked"] = [
            {
                "partition": r.partition,
                "sub_key": sub_key_text(r.sub_key),
                "sub_key_kind": sub_key_kind(r.sub_key),
                "offset": r.offset,
                "attempts": r.attempts,
                "error_type": r.error_type,
                "error_message": r.error_message,
            }
            for r in inspector.blocked()
        ]
        out["stuck_after"] = self.stuck_after
        return out

    def _dead_letters(
        self, namespace: str, inspector: Inspector, partitions: list[PartitionView]
    ) -> list[DeadLetter]:
        """Read again only when a partition's dead-letter count changed (or every
        DEAD_LETTER_REFRESH seconds: a drop and a new letter may leave a count as it was), and
        then at most DEAD_LETTER_LIMIT per partition: a page open on a namespace with a million
        dead letters must not read them all every second."""
        counts = tuple((p.partition, p.dead_letters) for p in partitions)
        now = time.monotonic()
        with self._lock:
            cached = self._dead_cache.get(namespace)
        if cached is not None and cached[0] == counts and now - cached[1] < DEAD_LETTER_REFRESH:
            return cached[2]
        parts = [p.partition for p in partitions if p.dead_letters]
        letters = inspector.some_dead_letters(parts, DEAD_LETTER_LIMIT)[:DEAD_LETTER_LIMIT]
        with self._lock:
            self._dead_cache[namespace] = (counts, now, letters)
        return letters

    def close(self) -> None:
        self.backend.close()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _namespace_of(request: Request, state: DashboardState) -> str:
    ns = request.query_params.get("namespace") or state.default_namespace
    if not ns:
        raise InvalidInput("namespace is missing (?namespace=NS)")
    return codec.check_namespace(ns)


def create_app(
    redis: Any,
    *,
    namespace: str | None = None,
    allow_actions: bool = False,
    interval: float = 1.0,
    stuck_after: float = DEFAULT_STUCK_AFTER,
) -> Starlette:
    """The dashboard as an ASGI app (``redis``: a URL, a client or a Backend)."""
    if namespace is not None:
        codec.check_namespace(namespace)
    if interval <= 0:
        raise InvalidInput(f"interval must be > 0 seconds, got {interval}")
    state = DashboardState(redis, namespace, allow_actions, interval, stuck_after)
    static = resources.files("workshaper.ops.dashboard") / "static"

    async def index(request: Request) -> Response:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    async def config(request: Request) -> Response:
        return JSONResponse(
            {
                "allow_actions": state.allow_actions,
                "namespace": state.default_namespace,
                "interval": state.interval,
                "redis": state.where,
            }
        )

    async def list_namespaces(request: Request) -> Response:
        return JSONResponse({"namespaces": await run_in_threadpool(state.namespaces)})

    async def snapshot(request: Request) -> Response:
        try:
            ns = _namespace_of(request, state)
        except (InvalidInput, InvalidType) as exc:
            return _error(400, str(exc))
        return JSONResponse(await run_in_threadpool(state.snapshot, ns))

    async def events(request: Request) -> Response:
        try:
            ns = _namespace_of(request, state)
        except (InvalidInput, InvalidType) as exc:
            return _error(400, str(exc))

        async def stream() -> AsyncIterator[str]:
            while not await request.is_disconnected():
                try:
                    doc = await run_in_threadpool(state.snapshot, ns)
                    yield f"event: snapshot\ndata: {json.dumps(doc)}\n\n"
                except Exception as exc:  # Redis down: tell the page, keep the stream
                    log.warning("dashboard: reading namespace %s failed: %s", ns, exc)
                    yield f"event: failure\ndata: {json.dumps({'error': str(exc)})}\n\n"
                await asyncio.sleep(state.interval)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def action(request: Request) -> Response:
        if not state.allow_actions:
            return _error(403, "actions are off: start the dashboard with --allow-actions")
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise InvalidInput("the request body must be a JSON object")
            ns = codec.check_namespace(body.get("namespace") or state.default_namespace)
            partition = codec.check_partition(body.get("partition"))
            what = request.path_params["what"]
            result = await run_in_threadpool(_act, state, what, ns, partition, body)
        except (InvalidInput, InvalidType, ValueError) as exc:
            return _error(400, str(exc))
        log.info("dashboard action %s on namespace %s partition %d", what, ns, partition)
        return JSONResponse(result)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        state.close()

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/config", config),
            Route("/api/namespaces", list_namespaces),
            Route("/api/snapshot", snapshot),
            Route("/api/events", events),
            Route("/api/actions/{what}", action, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=str(static)), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.dashboard = state
    return app


def _act(
    state: DashboardState, what: str, ns: str, partition: int, body: dict[str, Any]
) -> dict[str, Any]:
    inspector = state.inspector(ns)
    if what in ("replay", "drop"):
        offset = codec.check_offset(body.get("offset"))
        if what == "replay":
            return inspector.replay(partition, offset, wait=REPLAY_WAIT).to_json()
        letter = inspector.dead_letter(partition, offset)
        if letter is None:
            raise InvalidInput(f"partition {partition} has no dead letter at offset {offset}")
        return {"dropped": inspector.drop([letter])}
    if what in ("retry", "dead-letter"):
        text = body.get("sub_key")
        if not isinstance(text, str):
            raise InvalidInput("sub_key (text) is missing")
        sub_key = parse_sub_key(text, str(body.get("sub_key_kind") or "str"))
        admin = Admin(state.backend, ns)
        act = admin.retry_blocked if what == "retry" else admin.dead_letter_blocked
        if not act(partition, sub_key):
            raise InvalidInput(f"sub key {text!r} of partition {partition} is not blocked")
        return {"unblocked": True, "action": what}
    raise InvalidInput(f"unknown action {what!r} (replay, drop, retry, dead-letter)")


def serve_dashboard(
    redis: Any,
    *,
    namespace: str | None,
    host: str,
    port: int,
    allow_actions: bool,
    interval: float,
) -> None:
    """Serve the dashboard until SIGTERM or SIGINT (uvicorn handles both)."""
    import uvicorn  # noqa: PLC0415

    app = create_app(redis, namespace=namespace, allow_actions=allow_actions, interval=interval)
    mode = "actions allowed" if allow_actions else "read-only"
    print(f"workshaper dashboard: http://{host}:{port}/ ({mode})", flush=True)
    # A live page holds an event stream open: stop waiting for it after 2 s on SIGTERM.
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
