"""The HTTP API, served by the workers themselves (Faust web views on ``--web-port``).

Any worker answers any request. A user's state lives on the worker that consumes the
partition of the user's events, so the two routes that read a user
(``GET /users/{user_id}/recommendations``, ``POST /recommend`` with a ``user_id``) are
answered there: the receiving worker computes that partition exactly as Kafka producers do
(murmur2 of the UTF-8 user id, the Java client's and kafka-python's default partitioner),
finds its owner in the group's assignment (Faust's router metadata, which every member
receives with each rebalance) and forwards the request, body and token included, to the
owner's canonical URL (``http://--web-host:--web-port``), or answers itself.

Why not Faust's ``@app.table_route``: in faust-streaming 0.15.3 it hashes the *table's*
serialised key, which for a ``str``-keyed table is JSON (``b'"u1"'``), while the events (and
so the state) are partitioned by the raw id (``b'u1'``): it sends most users to a worker
that does not hold them (measured: 2 of the 4 users of the first test run). Its proxy also
drops the request body (no POST) and has no protection against forwarding loops.

A forwarded request carries ``X-Streamrec-Hop``; a worker that receives one for a user it
does not own (the assignment is moving) answers 503 instead of forwarding again, so two
workers that briefly disagree about an owner never bounce a request between them.
Producers must key events by the user id with the default (murmur2) partitioner; a
librdkafka-based client needs ``partitioner=murmur2_random``.

The user's list is computed from the state in the table when asked (not the last published
record): it then reflects the current model version, catalogue and popularity, a user the
worker has never seen gets the cold-start list without a second table, and exploration
(when on) counts the answer as a list served to that user.

Errors are JSON ``{"error": code, "detail": what to do, "status": n}``: 400 bad request, 401
missing or wrong bearer token (only when ``STREAMREC_API_TOKEN`` is set; ``/health`` and
``/metrics`` stay open), 404 unknown item or route, 405 wrong method, 413 body over
``max_body_bytes`` (64 KiB), 503 while the catalogue/model is loading or partitions are being
reassigned (with ``Retry-After``). The routes are described in ``docs/openapi.yaml``.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Protocol

import faust
from aiohttp import ClientError, ClientTimeout, web as aioweb
from aiokafka.partitioner import murmur2
from yarl import URL

from inference.events import DEFAULT_LIMITS, InvalidEvent, _parse_id
from inference.user import UserState



class ServingWorker(Protocol):
    """What the API needs of a worker (``streams.app.StreamrecWorker`` is one); a protocol, so
    this module does not import the app that registers it."""

    cfg: Any
    recommender: Any
    users: Any
    batcher: Any
    catalogue: Any

    @property
    def model_version(self) -> str: ...

    def serving_ready(self) -> bool: ...

    def version_label(self, version: str) -> str: ...

log = logging.getLogger("streamrec.api")

MAX_BODY_BYTES = 64 * 1024
MAX_N = 100
HOP_HEADER = "X-Streamrec-Hop"
OPEN_PATHS = frozenset({"/health", "/metrics"})  # never behind the token: probes and scrapers
TOKEN_ENV = "STREAMREC_API_TOKEN"


@dataclass
class ApiConfig:
    """API limits and the optional bearer token (from ``STREAMREC_API_TOKEN``, never a flag)."""

    token: str | None = field(default_factory=lambda: os.environ.get(TOKEN_ENV) or None, repr=False)
    max_body_bytes: int = MAX_BODY_BYTES
    max_n: int = MAX_N
    forward_timeout_s: float = 10.0


class ApiError(Exception):
    """An answer other than 200, as JSON."""

    def __init__(self, status: int, code: str, detail: str, headers: dict | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def error_body(status: int, code: str, detail: str) -> dict:
    return {"error": code, "detail": detail, "status": status}


def not_ready(detail: str) -> ApiError:
    return ApiError(503, "not_ready", detail, {"Retry-After": "1"})


class Api:
    """The request handlers, over one worker's recommender, table and encoder."""

    def __init__(self, worker: ServingWorker, app: faust.App, config: ApiConfig | None = None) -> None:
        self.worker = worker
        self.config = config or ApiConfig()
        self.app = app

    # -- helpers ---------------------------------------------------------------------------
    @property
    def me(self) -> str:
        return str(self.app.conf.canonical_url)

    def check_ready(self, *, users: bool = False) -> None:
        if not self.worker.serving_ready():
            raise not_ready("the worker is loading its model or catalogue: retry in a moment")
        if users and (self.app.rebalancing or getattr(self.app, "in_recovery", False)):
            raise not_ready("partitions are being reassigned or user state recovered: retry in a moment")

    def owner(self, user_id: str) -> URL | None:
        """The canonical URL of the worker that owns ``user_id``'s partition (None: this one)."""
        partition = user_partition(user_id, self.worker.cfg.partitions)
        topic = self.worker.cfg.topics.clicks
        for url, topics in self.app.router.external_topics_metadata().items():
            if partition in topics.get(topic, ()):
                return None if _same_node(URL(url), self.app.conf.canonical_url) else URL(url)
        raise not_ready(f"no worker is assigned partition {partition} of {topic} yet (the group is rebalancing): "
                        "retry in a moment")

    def user_state(self, user_id: str) -> UserState | None:
        raw = self.worker.users.get(user_id)
        return UserState.from_bytes(raw) if raw is not None else None

    def n(self, value: Any, default: int | None = None) -> int:
        default = default or self.worker.recommender.config.top_n
        if value is None or value == "":
            return min(default, self.config.max_n)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ApiError(400, "bad_request", f"n must be an integer within 1..{self.config.max_n}")
        try:
            n = int(value)
        except ValueError:
            raise ApiError(400, "bad_request", f"n is {value!r}: send an integer within 1..{self.config.max_n}") \
                from None
        if not 1 <= n <= self.config.max_n:
            raise ApiError(400, "bad_request", f"n is {n}: send an integer within 1..{self.config.max_n}")
        return n

    def items_json(self, items, explanations: list[dict] | None = None) -> list[dict]:
        records = self.worker.catalogue.records
        out = []
        for k, it in enumerate(items):
            entry: dict[str, Any] = {"item_id": it.item_id, "score": round(it.score, 6)}
            rec = records.get(it.item_id)
            if rec is not None and rec.title:
                entry["title"] = rec.title
            if it.explored:
                entry["explored"] = True
            if explanations is not None:
                entry["explanation"] = {k2: v for k2, v in explanations[k].items()
                                        if k2 not in ("item_id", "score", "explored")}
            out.append(entry)
        return out

    async def forward(self, web, request, owner: URL, body: bytes | None = None) -> Any:
        """Send ``request`` (with ``body``) to the worker at ``owner``; its answer is ours."""
        if request.headers.get(HOP_HEADER):
            raise not_ready("this worker does not own the user any more (the group is rebalancing): retry in a "
                            "moment")
        url = owner.join(request.rel_url)  # path and query as received (still encoded)
        headers = {HOP_HEADER: self.me, "Content-Type": "application/json"}
        auth = request.headers.get("Authorization")
        if auth:
            headers["Authorization"] = auth
        try:
            async with self.app.http_client.request(
                    request.method, url, data=body, headers=headers,
                    timeout=ClientTimeout(total=self.config.forward_timeout_s)) as resp:
                payload = await resp.read()
                return web.bytes(payload, content_type=resp.content_type or "application/json",
                                 status=resp.status)
        except (ClientError, TimeoutError) as exc:
            raise not_ready(f"the worker that owns this user ({owner}) did not answer ({type(exc).__name__}): "
                            "retry in a moment") from None

    # -- handlers ----------------------------------------------------------------------------
    def user_recommendations(self, request, user_id: str) -> dict:
        n = self.n(request.query.get("n"))
        explain = flag(request.query.get("explain"), "explain")
        state = self.user_state(user_id)
        rec = self.worker.recommender.recommend(state, n, user_id=user_id)
        explanations = self.worker.recommender.explain(state, rec) if explain else None
        now = time.time()
        fresh = None
        if state is not None and state.count:
            fresh = {"last_event_time": state.last_time, "age_s": round(max(0.0, now - state.last_time), 3),
                     "events": state.count}
        return {"user_id": user_id, "model_version": self.worker.version_label(rec.model_version or "v0"),
                "cold_start": rec.cold_start,
                "known_user": state is not None, "freshness": fresh, "items": self.items_json(rec.items, explanations),
                "computed_at": round(now, 6), "served_by": self.me}

    async def recommend_text(self, request, data: dict, user_id: str | None) -> dict:
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "bad_request", "field 'text' is required: a non-empty string, e.g. "
                                               "{\"text\": \"a warm acoustic guitar for a beginner\"}")
        n = self.n(data.get("n"))
        weight = data.get("text_weight")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                                   or not 0.0 <= float(weight) <= 1.0):
            raise ApiError(400, "bad_request", "field 'text_weight' must be a number within 0..1")
        explain = flag(data.get("explain"), "explain")
        vec = await self.worker.batcher.encode(text)
        if not vec.any():
            raise ApiError(400, "bad_request", "field 'text' has nothing the encoder can use: send words")
        rec_ = self.worker.recommender
        state = self.user_state(user_id) if user_id is not None else None
        q = rec_.query(state, vec, weight)
        rec = rec_.recommend_for_request(state, vec, n, text_weight=weight)
        explanations = rec_.explain(state, rec, text_vec=vec, text_weight=weight) if explain else None
        return {"user_id": user_id, "model_version": self.worker.version_label(rec.model_version or "v0"),
                "known_user": state is not None, "text_weight": round(q.text_coef / (q.text_coef + q.user_coef), 6) if q.text_coef else 0.0,
                "items": self.items_json(rec.items, explanations), "served_by": self.me}

    def similar(self, request, item_id: str) -> dict:
        n = self.n(request.query.get("n"))
        try:
            items = self.worker.recommender.similar(item_id, n)
        except KeyError:
            raise ApiError(404, "unknown_item", f"item {item_id!r} is not in the catalogue: publish it to "
                                                f"{self.worker.cfg.topics.items} first") from None
        return {"item_id": item_id, "model_version": self.worker.model_version, "items": self.items_json(items),
                "served_by": self.me}


def parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "bad_request", "the body is not UTF-8 JSON: send a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object like {\"text\": \"...\"}")
    return data


def flag(value: Any, name: str) -> bool:
    if value is None or value in ("", "0", "false", False, 0):
        return False
    if value in ("1", "true", True, 1):
        return True
    raise ApiError(400, "bad_request", f"{name} must be 1/true or 0/false, not {value!r}")


def parse_user_id(value: Any) -> str:
    try:
        user_id = _parse_id(value, "user_id", DEFAULT_LIMITS)
    except InvalidEvent as exc:
        raise ApiError(400, "bad_request", exc.detail) from None
    if user_id is None:
        raise ApiError(400, "bad_request", "user_id is empty: send the user's id")
    return user_id


async def read_body(request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes before reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"the body is {request.content_length:,} bytes, over the {limit:,}-byte "
                                         "limit: send a shorter text")
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"the body is over the {limit:,}-byte limit: send a shorter text")
        chunks.append(chunk)


def user_partition(user_id: str, partitions: int) -> int:
    """The partition a Kafka producer's default partitioner puts ``user_id``'s events in."""
    return (murmur2(user_id.encode("utf-8")) & 0x7FFFFFFF) % partitions


def _same_node(a: URL, b: URL) -> bool:
    def ident(u: URL) -> tuple[str, int]:
        u = URL(str(u))
        return (u.host or "", int(u.port or 80))

    return ident(a) == ident(b)


Handler = Callable[..., Awaitable[Any]]


def json_errors(fun: Handler) -> Handler:
    """Turn :class:`ApiError` (and any crash) into a JSON answer."""

    @wraps(fun)
    async def wrapper(view, request, *args, **kwargs):
        try:
            return await fun(view, request, *args, **kwargs)
        except ApiError as exc:
            return view.web.json(error_body(exc.status, exc.code, exc.detail), status=exc.status,
                                 headers=exc.headers or None)
        except Exception as exc:  # noqa: BLE001 - a request must never take the worker down
            log.exception("API %s %s failed", request.method, request.path)
            return view.web.json(error_body(500, "internal", f"{type(exc).__name__}: the worker logged the "
                                                              "details; report them"), status=500)

    return wrapper


def auth_middleware(config: ApiConfig):
    """Bearer-token check on every route but /health and /metrics, and JSON for aiohttp's own
    errors (unknown route 404, wrong method 405, body too large 413)."""
    expected = f"Bearer {config.token}".encode() if config.token else None

    @aioweb.middleware
    async def middleware(request, handler):
        if expected is not None and request.path not in OPEN_PATHS:
            got = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(got, expected):
                return aioweb.json_response(
                    error_body(401, "unauthorized", "send the API token as 'Authorization: Bearer <token>'"),
                    status=401, headers={"WWW-Authenticate": 'Bearer realm="streamrec"'})
        try:
            return await handler(request)
        except aioweb.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
            headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
            return aioweb.json_response(error_body(exc.status, code, exc.reason or code), status=exc.status,
                                        headers=headers)

    return middleware


def register_api(worker: ServingWorker, app: faust.App, config: ApiConfig | None = None) -> Api:
    """Add the API's views (and the token/error middleware) to ``app``'s web server."""
    api = Api(worker, app, config)
    app.web.web_app.middlewares.append(auth_middleware(api.config))

    @app.page("/users/{user_id}/recommendations")
    class UserRecommendations(faust.web.View):
        """The user's current list (cold-start list for a user never seen)."""

        @json_errors
        async def get(self, request, user_id: str):
            api.check_ready(users=True)
            user_id = parse_user_id(user_id)
            owner = api.owner(user_id)
            if owner is not None:
                return await api.forward(self.web, request, owner)
            return self.json(api.user_recommendations(request, user_id))

    @app.page("/recommend")
    class RecommendText(faust.web.View):
        """A natural-language request, optionally blended with a user's vector."""

        @json_errors
        async def post(self, request):
            api.check_ready()
            body = await read_body(request, api.config.max_body_bytes)
            data = parse_json(body)
            user_id = parse_user_id(data["user_id"]) if data.get("user_id") is not None else None
            if user_id is not None:
                api.check_ready(users=True)
                owner = api.owner(user_id)
                if owner is not None:
                    return await api.forward(self.web, request, owner, body)
            return self.json(await api.recommend_text(request, data, user_id))

    @app.page("/items/{item_id}/similar")
    class SimilarItems(faust.web.View):
        """Nearest items in the current model's space."""

        @json_errors
        async def get(self, request, item_id: str):
            api.check_ready()
            return self.json(api.similar(request, item_id))

    return api

