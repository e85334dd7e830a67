"""The HTTP service: search, chat sessions, index management, thumbnails, a web page.

``create_app(retriever)`` returns a FastAPI application over any retriever that can also
``add`` and ``remove`` items (a :class:`~vistrieve.retrievers.dense.DenseRetriever`); the
OpenAPI description is at ``/openapi.json`` and interactive docs at ``/docs``.

Thumbnails are served only for ids in the index, from the corpus item's own image; a client
can never name a file path. Malformed requests get a 4xx answer with a message.
"""

from __future__ import annotations

import io
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from vistrieve.query_rewriting.chat import FALLBACK_QUESTIONS, ChatSession
from vistrieve.types import DialogTurn, Hit, Item, Query

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_K = 200


class TextSearch(BaseModel):
    """Body of ``POST /search/text``."""

    text: str = Field(min_length=1, max_length=2000)
    k: int = Field(default=10, ge=1, le=MAX_K)


class Message(BaseModel):
    """Body of ``POST /sessions/{id}/messages``."""

    text: str = Field(min_length=1, max_length=2000)


class Feedback(BaseModel):
    """Body of ``POST /sessions/{id}/feedback``."""

    id: str = Field(min_length=1)
    relevant: bool


def generic_questioner(caption: str, turns: Sequence[DialogTurn]) -> str | None:
    """Asks the generic questions in order (no LLM); ``None`` when all were asked."""
    asked = {t.question for t in turns}
    return next((q for q in FALLBACK_QUESTIONS if q not in asked), None)


def _hit_json(hit: Hit) -> dict[str, Any]:
    meta = hit.metadata
    return {
        "id": hit.id,
        "score": hit.score,
        "scores": dict(hit.scores),
        "caption": meta.get("caption"),
        "thumbnail": f"/thumbnails/{hit.id}",
    }


def create_app(
    retriever: Any,
    *,
    questioner: Callable[[str, Sequence[DialogTurn]], str | None] | None = generic_questioner,
    max_sessions: int = 1000,
    title: str = "vistrieve",
) -> Any:
    """A FastAPI app serving ``retriever``.

    Args:
        retriever: A retriever with ``retrieve``, ``corpus``, ``add`` and ``remove``.
        questioner: Asks chat sessions' next question (default: generic questions, no
            LLM; pass ``LLMQuestioner(llm)`` for an LLM; ``None``: never asks).
        max_sessions: Sessions kept in memory (the oldest are dropped beyond it).
        title: OpenAPI title.
    """
    app = FastAPI(title=title, description="Image-text retrieval with chat-based search.")
    lock = threading.RLock()
    sessions: OrderedDict[str, ChatSession] = OrderedDict()

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(KeyError)
    async def _key_error(request: Request, exc: KeyError) -> JSONResponse:
        msg = exc.args[0] if exc.args else str(exc)
        return JSONResponse(status_code=404, content={"detail": str(msg)})

    def _search(query: Query, k: int) -> list[dict[str, Any]]:
        with lock:
            hits = retriever.retrieve([query], k=min(k, max(1, len(retriever.corpus))))[0]
        return [_hit_json(h) for h in hits]

    async def _image(upload: UploadFile) -> Image.Image:
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"image larger than {MAX_UPLOAD_BYTES} bytes")
        if not data:
            raise HTTPException(400, "empty image upload")
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise HTTPException(400, f"cannot read the uploaded image: {exc}") from exc

    def _check_k(k: int) -> int:
        if not 1 <= k <= MAX_K:
            raise HTTPException(422, f"k must be between 1 and {MAX_K}")
        return k

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and index size."""
        return {"status": "ok", "items": len(retriever.corpus), "sessions": len(sessions)}

    @app.post("/search/text")
    def search_text(body: TextSearch) -> dict[str, Any]:
        """Text -> image search."""
        return {"hits": _search(Query(text=body.text), body.k)}

    @app.post("/search/image")
    async def search_image(
        image: Annotated[UploadFile, File()], k: Annotated[int, Form()] = 10
    ) -> dict[str, Any]:
        """Image -> image search (multipart upload)."""
        q = Query(image=await _image(image))
        return {"hits": _search(q, _check_k(k))}

    @app.post("/search/composed")
    async def search_composed(
        image: Annotated[UploadFile, File()],
        text: Annotated[str, Form(min_length=1)],
        k: Annotated[int, Form()] = 10,
    ) -> dict[str, Any]:
        """Composed search: reference image + modification text."""
        q = Query(image=await _image(image), text=text)
        return {"hits": _search(q, _check_k(k))}

    # ------------------------------------------------------------------ sessions
    def _session(session_id: str) -> ChatSession:
        s = sessions.get(session_id)
        if s is None:
            raise HTTPException(404, f"no session {session_id!r}")
        sessions.move_to_end(session_id)
        return s

    @app.post("/sessions", status_code=201)
    def create_session(k: int = 10) -> dict[str, Any]:
        """Start a chat session."""
        sid = secrets.token_urlsafe(12)
        with lock:
            sessions[sid] = ChatSession(retriever, questioner=questioner, k=_check_k(k))
            while len(sessions) > max_sessions:
                sessions.popitem(last=False)
        return {"session_id": sid}

    @app.post("/sessions/{session_id}/messages")
    def send_message(session_id: str, body: Message) -> dict[str, Any]:
        """Send a message (the description, or the answer to the agent's question)."""
        s = _session(session_id)
        with lock:
            reply = s.send(body.text)
        return {
            "hits": [_hit_json(h) for h in reply.hits],
            "question": reply.question,
            "query": reply.query,
        }

    @app.post("/sessions/{session_id}/feedback")
    def feedback(session_id: str, body: Feedback) -> dict[str, Any]:
        """Mark a shown hit relevant or not."""
        s = _session(session_id)
        with lock:
            s.feedback(body.id, body.relevant)
        return {"relevant": s.state.relevant, "irrelevant": s.state.irrelevant}

    @app.get("/sessions/{session_id}")
    def session_state(session_id: str) -> dict[str, Any]:
        """The session's state (dialog, feedback, shown hits)."""
        import json

        return dict(json.loads(_session(session_id).to_json()))

    # ------------------------------------------------------------------ index
    @app.post("/index/items", status_code=201)
    async def add_item(
        id: Annotated[str, Form(min_length=1, max_length=200)],
        image: Annotated[UploadFile, File()],
        caption: Annotated[str | None, Form()] = None,
    ) -> dict[str, Any]:
        """Add an image (with an optional caption) to the index."""
        im = await _image(image)
        with lock:
            if id in retriever.corpus:
                raise HTTPException(409, f"id {id!r} is already in the index")
            report = retriever.add([Item(id=id, image=im, captions=(caption,) if caption else ())])
        if not report.n_indexed:
            raise HTTPException(400, f"image for {id!r} could not be indexed")
        return {"id": id, "items": len(retriever.corpus)}

    @app.delete("/index/items/{item_id}")
    def delete_item(item_id: str) -> dict[str, Any]:
        """Remove an item from the index."""
        with lock:
            if item_id not in retriever.corpus:
                raise HTTPException(404, f"id {item_id!r} is not in the index")
            retriever.remove([item_id])
        return {"deleted": item_id, "items": len(retriever.corpus)}

    @app.get("/thumbnails/{item_id}")
    def thumbnail(item_id: str, size: int = 128) -> Response:
        """A PNG thumbnail of an indexed item (ids only; never a client path)."""
        from vistrieve.utils.images import ImageLoadError, load_image

        if not 16 <= size <= 512:
            raise HTTPException(422, "size must be between 16 and 512")
        item = retriever.corpus.get(item_id)
        if item is None or item.image is None:
            raise HTTPException(404, f"id {item_id!r} is not in the index")
        try:
            im = load_image(item.image).copy()
        except ImageLoadError as exc:
            raise HTTPException(410, f"the image of {item_id!r} is no longer readable") from exc
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        """The chat-based image search page."""
        return (Path(__file__).parent / "static" / "index.html").read_text(encoding="utf-8")

    return app


def serve(
    index_dir: str, *, host: str = "127.0.0.1", port: int = 8000, llm: str | None = None
) -> None:
    """Load a saved retriever and serve it (``vistrieve serve INDEX``)."""
    import uvicorn

    from vistrieve.retrievers.dense import DenseRetriever

    retriever = DenseRetriever.load(index_dir)
    questioner: Any = generic_questioner
    if llm == "smollm2":
        from vistrieve.llm import load_smollm2
        from vistrieve.query_rewriting.chat import LLMQuestioner

        questioner = LLMQuestioner(load_smollm2())
    elif llm is not None:
        raise ValueError(f"unknown --llm {llm!r}; use smollm2 or leave it out")
    uvicorn.run(create_app(retriever, questioner=questioner), host=host, port=port)
