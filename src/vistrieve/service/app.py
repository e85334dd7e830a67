"""The HTTP service: search, chat sessions, index management, thumbnails, metrics, a web page.

``create_app(target)`` serves a retriever or a :class:`~vistrieve.pipeline.RetrievalPipeline`
(built from a spec: searches are reranked as it says, composed queries go through its
rewriter, "relevant" feedback drives its EIIRwQR loop). Every answer with hits carries each
stage's score and the time of each stage; ``/metrics`` gives Prometheus per-stage latency
histograms and request counts; ``/docs`` works offline (Swagger UI from the installed
``swagger-ui-bundle`` package).

Robustness: every request body is size-capped and every text field length-capped;
uploads are decoded in a worker thread under byte and pixel limits; index changes are
committed to a SQLite journal before they are acknowledged and replayed at start-up;
sessions live in SQLite (bounded in number, rounds, text and log length) and a chat step
that fails (an LLM error answers 503) leaves its session as it was; mutating index routes
take an optional bearer token; requests from other origins to state-changing routes are
refused. Thumbnails are served only for ids in the index; a client never names a path.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from vistrieve.query_rewriting.chat import ChatSession, SessionState
from vistrieve.types import Hit, Item, Query

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class ServiceConfig:
    """Limits and access policy of the service.

    Args:
        max_upload_bytes: Largest image upload.
        max_body_bytes: Largest request body of JSON routes (uploads get
            ``max_upload_bytes`` plus form overhead).
        max_text_chars: Longest text field (query text, message, caption, id).
        max_pixels: Largest image (width x height) decoded from an upload.
        max_k: Most hits per request.
        max_sessions: Chat sessions kept (least recently used are evicted).
        max_open_sessions: Sessions kept live in memory (the rest reload from SQLite).
        token: Bearer token required by the index-changing routes (None: open).
        allowed_origins: Origins (``scheme://host:port``) besides the service's own that may
            call state-changing routes from a browser.
    """

    max_upload_bytes: int = 10 * 1024 * 1024
    max_body_bytes: int = 64 * 1024
    max_text_chars: int = 2000
    max_pixels: int = 40_000_000
    max_k: int = 200
    max_sessions: int = 1000
    max_open_sessions: int = 100
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()


class TextSearch(BaseModel):
    """Body of ``POST /search/text``."""

    text: str = Field(min_length=1, max_length=2000)
    k: int = Field(default=10, ge=1)


class Message(BaseModel):
    """Body of ``POST /sessions/{id}/messages``."""

    text: str = Field(min_length=1, max_length=2000)


class Feedback(BaseModel):
    """Body of ``POST /sessions/{id}/feedback``."""

    id: str = Field(min_length=1, max_length=2000)
    relevant: bool


class _CorpusImages(Mapping[str, Any]):
    """Item id -> image, read from the live corpus (for captions of relevant hits)."""

    def __init__(self, corpus: Mapping[str, Item]) -> None:
        self.corpus = corpus

    def __getitem__(self, key: str) -> Any:
        image = self.corpus[key].image
        if image is None:
            raise KeyError(key)
        return image

    def __iter__(self) -> Iterator[str]:
        return (i for i, it in self.corpus.items() if it.image is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _is_llm_failure(exc: BaseException) -> bool:
    """Whether ``exc`` comes from an LLM backend (answered with 503, not 500)."""
    from vistrieve.llm import EndpointError

    names = {type(e).__name__ for e in type(exc).__mro__}
    return isinstance(exc, EndpointError) or bool(names & {"LLMError", "LogitsUnavailableError"})


class _Metrics:
    """Prometheus metrics of one app (its own registry: apps in one process do not mix)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
        self.stage = Histogram(
            "vistrieve_stage_seconds",
            "Wall time of each retrieval stage per request",
            ["stage"],
            registry=self.registry,
            buckets=buckets,
        )
        self.request = Histogram(
            "vistrieve_request_seconds",
            "Wall time of each request",
            ["route"],
            registry=self.registry,
            buckets=buckets,
        )
        self.requests = Counter(
            "vistrieve_requests",
            "Requests by route and status code",
            ["route", "status"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


def _body_limit(cfg: ServiceConfig, path: str) -> int:
    if path.startswith(("/index/items", "/search/image", "/search/composed")):
        return cfg.max_upload_bytes + 64 * 1024  # the image plus the form around it
    return cfg.max_body_bytes


class _BodyLimit:
    """ASGI middleware: a request body over the route's limit gets 413, whether its length
    is declared (refused before reading) or not (counted while it is read)."""

    def __init__(self, app: Any, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    @staticmethod
    async def _reply(send: Any, limit: int) -> None:
        body = json.dumps({"detail": f"request body over {limit} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())],
            }
        )  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = limit + 1
            if size > limit:
                await self._reply(send, limit)
                return
        state = {"received": 0, "over": False, "replied": False}

        async def limited_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["over"] = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: Any) -> None:
            if state["over"]:
                # Whatever the app made of a cut-off body, the answer is 413.
                if not state["replied"]:
                    state["replied"] = True
                    await self._reply(send, limit)
                return
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


def create_app(
    target: Any,
    *,
    config: ServiceConfig | None = None,
    store: Any = None,
    questioner: Callable[..., str | None] | None = None,
    feedback_loop: Any = None,
    captioner: Any = None,
    title: str = "vistrieve",
) -> Any:
    """A FastAPI app serving ``target``.

    Args:
        target: A retriever, or a pipeline whose first stage (``target.retriever``) can
            ``add`` and ``remove`` items and has a ``corpus``.
        config: Limits and access policy (:class:`ServiceConfig`).
        store: A :class:`~vistrieve.service.store.ServiceStore` for the index journal and
            sessions (None: sessions in memory only, index changes not persisted).
        questioner: Asks chat sessions' next question (default: the candidate-grounded
            :class:`~vistrieve.query_rewriting.dialog_agent.DialogAgent`, which also ranks
            with the answers).
        feedback_loop: An EIIRwQR :class:`~vistrieve.query_rewriting.chat.FeedbackLoop`;
            with it, hits marked relevant rewrite the next query.
        captioner: Describes images that have no captions, so that the default agent has
            evidence to ask about in a captionless photo folder (see
            :func:`~vistrieve.query_rewriting.dialog_agent.captioned_texts`).
        title: OpenAPI title.
    """
    cfg = config or ServiceConfig()
    retriever = getattr(target, "retriever", target)
    for attr in ("corpus", "add", "remove"):
        if not hasattr(retriever, attr):
            raise TypeError(f"the served first stage {type(retriever).__name__} has no {attr!r}")
    ask = questioner
    agent = None
    if questioner is None:
        from vistrieve.query_rewriting.dialog_agent import (
            CandidateEvidence,
            CaptionWords,
            DialogAgent,
            captioned_texts,
        )

        evidence = None
        if captioner is not None:
            evidence = CandidateEvidence(CaptionWords(), captioned_texts(captioner, target))
        agent = DialogAgent(target, evidence=evidence, cache_size=0)  # the served index changes
    lock = threading.RLock()
    sessions: OrderedDict[str, ChatSession] = OrderedDict()
    metrics = _Metrics()
    app = FastAPI(
        title=title,
        description="Image-text retrieval with chat-based search.",
        docs_url=None,
        redoc_url=None,
    )

    # ------------------------------------------------------------------ middleware
    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Any]) -> Any:
        t0 = time.perf_counter()
        route = request.url.path.split("/", 2)[1] if request.url.path != "/" else "page"
        response = _refuse(request)
        if response is None:
            response = await call_next(request)
        metrics.requests.labels(route or "page", str(response.status_code)).inc()
        metrics.request.labels(route or "page").observe(time.perf_counter() - t0)
        return response

    def _refuse(request: Request) -> JSONResponse | None:
        """A 4xx answer for a request that must not run, else None (body size is checked
        by :class:`_BodyLimit`)."""
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("origin")
            site = request.headers.get("sec-fetch-site")
            if origin is not None and not _same_origin(origin, request):
                return JSONResponse(
                    {"detail": f"cross-origin request from {origin} refused"}, status_code=403
                )
            if origin is None and site == "cross-site":
                return JSONResponse({"detail": "cross-site request refused"}, status_code=403)
            if cfg.token and request.url.path.startswith("/index/"):
                given = request.headers.get("authorization", "")
                if not secrets.compare_digest(given, f"Bearer {cfg.token}"):
                    return JSONResponse(
                        {"detail": "this route needs Authorization: Bearer <token>"},
                        status_code=401,
                        headers={"WWW-Authenticate": "Bearer"},
                    )
        return None

    def _same_origin(origin: str, request: Request) -> bool:
        if origin in cfg.allowed_origins:
            return True
        parts = urlsplit(origin)
        host = request.headers.get("host", "")
        return parts.netloc == host and parts.scheme in ("http", "https")

    # ------------------------------------------------------------------ errors
    @app.exception_handler(ValueError)
    async def _value_error(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(KeyError)
    async def _key_error(request: Request, exc: KeyError) -> JSONResponse:
        msg = exc.args[0] if exc.args else str(exc)
        return JSONResponse(status_code=404, content={"detail": str(msg)})

    # ------------------------------------------------------------------ helpers
    def _hit_json(hit: Hit) -> dict[str, Any]:
        meta = hit.metadata
        return {
            "id": hit.id,
            "score": hit.score,
            "scores": dict(hit.scores),
            "caption": meta.get("caption"),
            "thumbnail": "/thumbnails/" + quote(hit.id, safe=""),
        }

    def _k(k: int) -> int:
        if not 1 <= k <= cfg.max_k:
            raise HTTPException(422, f"k must be between 1 and {cfg.max_k}")
        # Never more than the index holds: no buffers sized by a client's number.
        return max(1, min(k, len(retriever.corpus)))

    def _retrieve(query: Query, k: int) -> tuple[list[Hit], dict[str, float]]:
        t0 = time.perf_counter()
        with lock:
            hits = target.retrieve([query], k=_k(k))[0]
            timings = dict(getattr(target, "last_timings", {}) or {})
        timings.setdefault("first_stage", time.perf_counter() - t0)
        timings["total"] = time.perf_counter() - t0
        for stage, seconds in timings.items():
            metrics.stage.labels(stage).observe(seconds)
        return hits, timings

    async def _search(query: Query, k: int) -> dict[str, Any]:
        try:
            hits, timings = await run_in_threadpool(_retrieve, query, k)
        except Exception as exc:
            if _is_llm_failure(exc):
                raise HTTPException(503, f"the LLM stage failed: {exc}") from exc
            raise
        return {"hits": [_hit_json(h) for h in hits], "timings": timings}

    def _decode(data: bytes) -> Image.Image:
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size  # the header only: nothing decoded yet
                if w * h > cfg.max_pixels:
                    raise HTTPException(
                        400, f"image of {w}x{h} pixels is over the {cfg.max_pixels}-pixel limit"
                    )
                im.load()
                return im.convert("RGB")
        except Image.DecompressionBombError as exc:
            raise HTTPException(
                400, f"image is over the {cfg.max_pixels}-pixel limit (a decompression bomb?)"
            ) from exc
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise HTTPException(400, f"cannot read the uploaded image: {exc}") from exc

    async def _image(upload: UploadFile) -> Image.Image:
        data = await upload.read(cfg.max_upload_bytes + 1)
        if len(data) > cfg.max_upload_bytes:
            raise HTTPException(413, f"image larger than {cfg.max_upload_bytes} bytes")
        if not data:
            raise HTTPException(400, "empty image upload")
        # Decoding a large image takes seconds of CPU: keep it off the event loop.
        return await run_in_threadpool(_decode, data)

    def _text(value: str, what: str) -> str:
        if len(value) > cfg.max_text_chars:
            raise HTTPException(422, f"{what} is over {cfg.max_text_chars} characters")
        return value

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness, index size and open sessions."""
        count = store.session_count() if store is not None else len(sessions)
        return {"status": "ok", "items": len(retriever.corpus), "sessions": count}

    @app.get("/metrics")
    def prometheus() -> Response:
        """Prometheus text format: per-stage latency histograms, request counts."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/search/text")
    async def search_text(body: TextSearch) -> dict[str, Any]:
        """Text -> image search (through every stage of the pipeline)."""
        return await _search(Query(text=_text(body.text, "text")), body.k)

    @app.post("/search/image")
    async def search_image(
        image: Annotated[UploadFile, File()], k: Annotated[int, Form()] = 10
    ) -> dict[str, Any]:
        """Image -> image search (multipart upload)."""
        return await _search(Query(image=await _image(image)), k)

    @app.post("/search/composed")
    async def search_composed(
        image: Annotated[UploadFile, File()],
        text: Annotated[str, Form(min_length=1)],
        k: Annotated[int, Form()] = 10,
    ) -> dict[str, Any]:
        """Composed search: reference image + modification text (through the rewriter when
        the pipeline has one, e.g. CIReVL)."""
        q = Query(image=await _image(image), text=_text(text, "text"))
        return await _search(q, k)

    # ------------------------------------------------------------------ sessions
    def _new_session(state: SessionState | None = None, k: int = 10) -> ChatSession:
        return ChatSession(
            target,
            questioner=ask,
            agent=agent,
            feedback_loop=feedback_loop,
            images=_CorpusImages(retriever.corpus),
            k=k,
            state=state,
        )

    def _session(session_id: str) -> ChatSession:
        s = sessions.get(session_id)
        if s is None and store is not None:
            raw = store.load_session(session_id)
            if raw is not None:
                k = int(raw.pop("_k", 10))
                s = _new_session(SessionState(**raw), k=k)
                sessions[session_id] = s
        if s is None:
            raise HTTPException(404, f"no session {session_id!r}")
        sessions.move_to_end(session_id)
        while len(sessions) > cfg.max_open_sessions:
            sessions.popitem(last=False)
        return s

    def _persist(session_id: str, s: ChatSession) -> None:
        if store is None:
            while len(sessions) > cfg.max_sessions:
                sessions.popitem(last=False)
            return
        from dataclasses import asdict

        for gone in store.save_session(session_id, {**asdict(s.state), "_k": s.k}):
            sessions.pop(gone, None)

    @app.post("/sessions", status_code=201)
    def create_session(k: int = 10) -> dict[str, Any]:
        """Start a chat session."""
        if not 1 <= k <= cfg.max_k:
            raise HTTPException(422, f"k must be between 1 and {cfg.max_k}")
        sid = secrets.token_urlsafe(12)
        with lock:
            s = _new_session(k=k)
            sessions[sid] = s
            _persist(sid, s)
        return {"session_id": sid}

    def _step(session_id: str, text: str) -> dict[str, Any]:
        with lock:
            s = _session(session_id)
            t0 = time.perf_counter()
            try:
                reply = s.send(text)  # all or nothing: a failure leaves the state as it was
            except Exception as exc:
                if _is_llm_failure(exc):
                    raise HTTPException(
                        503, f"the LLM failed; the session is unchanged, try again: {exc}"
                    ) from exc
                raise
            timings = dict(getattr(target, "last_timings", {}) or {})
            timings["total"] = time.perf_counter() - t0
            _persist(session_id, s)
        return {
            "hits": [_hit_json(h) for h in reply.hits],
            "question": reply.question,
            "query": reply.query,
            "timings": timings,
        }

    @app.post("/sessions/{session_id}/messages")
    async def send_message(session_id: str, body: Message) -> dict[str, Any]:
        """Send a message (the description, or the answer to the agent's question)."""
        return await run_in_threadpool(_step, session_id, _text(body.text, "message"))

    @app.post("/sessions/{session_id}/feedback")
    def feedback(session_id: str, body: Feedback) -> dict[str, Any]:
        """Mark a shown hit relevant or not (used by the next message)."""
        with lock:
            s = _session(session_id)
            s.feedback(body.id, body.relevant)
            _persist(session_id, s)
        return {"relevant": s.state.relevant, "irrelevant": s.state.irrelevant}

    @app.get("/sessions/{session_id}")
    def session_state(session_id: str) -> dict[str, Any]:
        """The session's state (dialog, feedback, shown hits, log)."""
        import json

        with lock:
            return dict(json.loads(_session(session_id).to_json()))

    @app.delete("/sessions/{session_id}")
    def delete_session(session_id: str) -> dict[str, Any]:
        """End a session."""
        with lock:
            existed = sessions.pop(session_id, None) is not None
            if store is not None:
                existed = store.delete_session(session_id) or existed
        if not existed:
            raise HTTPException(404, f"no session {session_id!r}")
        return {"deleted": session_id}

    # ------------------------------------------------------------------ index
    def _forget(ids: Sequence[str]) -> None:
        for _, stage in getattr(target, "stages", lambda: [])():
            forget = getattr(stage, "forget", None)
            if callable(forget):
                forget(ids)

    def _add(item_id: str, im: Image.Image, captions: tuple[str, ...]) -> int:
        with lock:
            if item_id in retriever.corpus:
                raise HTTPException(409, f"id {item_id!r} is already in the index")
            report = retriever.add([Item(id=item_id, image=im, captions=captions)])
            if not report.n_indexed:
                retriever.remove([item_id])
                raise HTTPException(400, f"image for {item_id!r} could not be indexed")
            if store is not None:
                try:
                    store.log_add(item_id, captions, im)
                except BaseException:
                    retriever.remove([item_id])  # not durable: not acknowledged either
                    raise
            _forget([item_id])
            return len(retriever.corpus)

    @app.post("/index/items", status_code=201)
    async def add_item(
        id: Annotated[str, Form(min_length=1, max_length=200)],
        image: Annotated[UploadFile, File()],
        caption: Annotated[str | None, Form(max_length=2000)] = None,
    ) -> dict[str, Any]:
        """Add an image (with an optional caption); durable before it is acknowledged."""
        im = await _image(image)
        captions = (_text(caption, "caption"),) if caption else ()
        items = await run_in_threadpool(_add, id, im, captions)
        return {"id": id, "items": items}

    def _delete(item_id: str) -> int:
        with lock:
            if item_id not in retriever.corpus:
                raise HTTPException(404, f"id {item_id!r} is not in the index")
            if store is not None:
                store.log_delete(item_id)  # durable first: a crash replays the delete
            retriever.remove([item_id])
            _forget([item_id])
            return len(retriever.corpus)

    @app.delete("/index/items/{item_id:path}")
    async def delete_item(item_id: str) -> dict[str, Any]:
        """Remove an item from the index (ids may contain ``/``)."""
        items = await run_in_threadpool(_delete, item_id)
        return {"deleted": item_id, "items": items}

    def _thumbnail(item_id: str, size: int) -> bytes:
        from vistrieve.utils.images import ImageLoadError, load_image

        item = retriever.corpus.get(item_id)
        if item is None or item.image is None:
            raise HTTPException(404, f"id {item_id!r} is not in the index")
        try:
            im = load_image(item.image).copy()
        except ImageLoadError as exc:
            raise HTTPException(410, f"the image of {item_id!r} is no longer readable") from exc
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="PNG")
        return buf.getvalue()

    @app.get("/thumbnails/{item_id:path}")
    async def thumbnail(item_id: str, size: int = 128) -> Response:
        """A PNG thumbnail of an indexed item (ids only; never a client path)."""
        if not 16 <= size <= 512:
            raise HTTPException(422, "size must be between 16 and 512")
        data = await run_in_threadpool(_thumbnail, item_id, size)
        return Response(data, media_type="image/png")

    # ------------------------------------------------------------------ page and docs
    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        """The chat-based image search page."""
        return (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """Interactive API docs, served from the installed Swagger UI files (offline)."""
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{title} API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

    @app.get("/docs-assets/{name}", include_in_schema=False)
    def docs_asset(name: str) -> Response:
        """Swagger UI's own files (from the swagger-ui-bundle package)."""
        import swagger_ui_bundle

        allowed = {
            "swagger-ui-bundle.js": "text/javascript",
            "swagger-ui.css": "text/css",
            "favicon-32x32.png": "image/png",
        }
        if name not in allowed:
            raise HTTPException(404, f"no asset {name!r}")
        data = (Path(swagger_ui_bundle.swagger_ui_path) / name).read_bytes()
        return Response(data, media_type=allowed[name])

    app.add_middleware(_BodyLimit, limit_for=lambda path: _body_limit(cfg, path))
    app.state.metrics = metrics
    app.state.store = store
    return app


def replay_journal(retriever: Any, store: Any, index_dir: str | Path | None) -> int:
    """Fold the journal into the served retriever (and, with ``index_dir``, into its saved
    directory, in one atomic save, then empty the journal); returns the entries replayed.

    Replaying is idempotent: an add of an id already present and a delete of an absent one
    are skipped, so a crash between the save and the journal clean-up is harmless.
    """
    entries = list(store.journal())
    for e in entries:
        if e.op == "add" and e.item_id not in retriever.corpus:
            with Image.open(io.BytesIO(e.image or b"")) as im:
                image = im.convert("RGB")
            retriever.add([Item(id=e.item_id, image=image, captions=e.captions)])
        elif e.op == "delete" and e.item_id in retriever.corpus:
            retriever.remove([e.item_id])
    if entries and index_dir is not None:
        retriever.save(index_dir)
        store.clear_journal(entries[-1].seq)
        logger.info("folded %d journal entries into %s", len(entries), index_dir)
    return len(entries)


def warn_if_agent_cannot_ask(target: Any, questioner: Any, captioner: Any) -> bool:
    """Warn (and return True) when the chat agent will never ask a question: the served
    index has no captions, and neither a questioner nor a captioner is given. The page
    then only searches, which a user would otherwise take for a broken agent."""
    if questioner is not None or captioner is not None:
        return False
    corpus = getattr(getattr(target, "retriever", target), "corpus", None)
    if corpus is None or any(item.captions for item in corpus.values()):
        return False
    logger.warning(
        "the served index has no captions, so the chat agent has nothing to ask about and "
        "will not ask questions; serve with --captioner DIR (`vistrieve train "
        "photo-captioner`) for questions about the candidates, or --llm smollm2 for "
        "questions from the conversation alone"
    )
    return True


def serve(
    index_dir: str | None = None,
    *,
    pipeline: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    llm: str | None = None,
    state: str | None = None,
    config: ServiceConfig | None = None,
    captioner: str | None = None,
) -> None:
    """Load a saved retriever or a pipeline spec and serve it (``vistrieve serve``).

    Args:
        index_dir: A saved retriever directory (or None with ``pipeline``).
        pipeline: A pipeline spec; its first stage's directory holds the served index.
        host, port: Where to listen.
        llm: ``"smollm2"``: an LLM questioner (without a spec).
        state: The SQLite state file (default: ``<index>.service.sqlite`` beside the index).
        config: Limits and access policy.
        captioner: A captioner directory (``vistrieve train photo-captioner``) describing
            uncaptioned images for the chat agent's questions.
    """
    import uvicorn

    from vistrieve.service.store import ServiceStore, default_state_path

    questioner: Any = None
    feedback_loop: Any = None
    if pipeline is not None:
        from vistrieve.pipeline import RetrievalPipeline

        target: Any = RetrievalPipeline.from_spec(pipeline)
        index_dir = target.spec["retriever"]["path"]
        questioner = target.parts.questioner
        feedback_loop = target.parts.feedback
    elif index_dir is not None:
        from vistrieve.retrievers import load_retriever

        target = load_retriever(index_dir)
    else:
        raise ValueError("give an index directory or a pipeline spec to serve")
    if llm == "smollm2":
        from vistrieve.llm import load_smollm2
        from vistrieve.query_rewriting.chat import LLMQuestioner

        questioner = LLMQuestioner(load_smollm2())
    elif llm is not None:
        raise ValueError(f"unknown --llm {llm!r}; use smollm2 or leave it out")
    cfg = config or ServiceConfig()
    store = ServiceStore(state or default_state_path(str(index_dir)), max_sessions=cfg.max_sessions)
    replayed = replay_journal(getattr(target, "retriever", target), store, index_dir)
    if replayed:
        logger.warning("replayed %d index changes made over HTTP", replayed)
    described_by = None
    if captioner is not None:
        from vistrieve.query_rewriting import load_captioner

        described_by = load_captioner(captioner)
    warn_if_agent_cannot_ask(target, questioner, described_by)
    app = create_app(target, config=cfg, store=store, questioner=questioner,
                     feedback_loop=feedback_loop, captioner=described_by)  # fmt: skip
    try:
        uvicorn.run(app, host=host, port=port)
    finally:
        store.close()


__all__ = ["ServiceConfig", "create_app", "replay_journal", "serve"]
