"""LangChain adapters: any vistrieve retriever or pipeline as a ``BaseRetriever``, and any
reranker as a ``BaseDocumentCompressor``.

Query convention (``invoke`` takes a string):

* plain text -> a text query: ``retriever.invoke("a red circle and a blue square")``;
* a JSON object -> an image, composed or dialog query:

  - ``{"image": "/path/ref.png"}`` (image -> image),
  - ``{"image": "/path/ref.png", "text": "make the circle green"}`` (composed),
  - ``{"text": "something red", "dialog": [["how many shapes?", "two"]]}`` (dialog);

* a :class:`~vistrieve.types.Query` object is also accepted as is.

Each :class:`~langchain_core.documents.Document` has the hit's caption (or id) as
``page_content`` and ``metadata`` with ``id``, ``score``, ``scores`` (every stage's score),
``image`` (the path, when the corpus item has one) and the hit's own metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun, Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from vistrieve.types import Hit, Item, Query


def parse_query(query: str | Query | Mapping[str, Any]) -> Query:
    """A :class:`Query` from the adapter's query convention (see the module docstring)."""
    if isinstance(query, Query):
        return query
    data: Any = query
    if isinstance(query, str):
        stripped = query.strip()
        if not stripped.startswith("{"):
            return Query(text=query)
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            return Query(text=query)  # text that merely starts with a brace
    if not isinstance(data, Mapping):
        raise TypeError(f"unsupported query {query!r}: give text, a JSON object or a Query")
    return Query.from_dict(data)


def hit_to_document(hit: Hit, corpus: Mapping[str, Item] | None = None) -> Document:
    """A LangChain document for one hit."""
    item = corpus.get(hit.id) if corpus is not None else None
    caption = hit.metadata.get("caption")
    if caption is None and item is not None and item.captions:
        caption = item.captions[0]
    meta: dict[str, Any] = {
        **{k: v for k, v in hit.metadata.items() if isinstance(k, str)},
        "id": hit.id,
        "score": hit.score,
        "scores": dict(hit.scores),
    }
    if item is not None and item.uri is not None:
        meta["image"] = item.uri
    return Document(page_content=str(caption or hit.id), metadata=meta, id=hit.id)


class VistrieveRetriever(BaseRetriever):
    """A vistrieve retriever, pipeline or generative retriever as a LangChain retriever.

    Args:
        retriever: Anything with ``retrieve(queries, k)``.
        k: Documents returned (also ``invoke(query, k=...)`` per call).
        corpus: Items by id, for captions and image paths in the documents.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: Any
    k: int = 4
    corpus: Any = None

    @classmethod
    def from_spec(cls, spec: Any, **kwargs: Any) -> VistrieveRetriever:
        """A retriever over the pipeline a spec file (or mapping) describes, with its first
        stage's corpus for document captions and image paths.

        Example:
            >>> retriever = VistrieveRetriever.from_spec("pipeline.toml", k=5)  # doctest: +SKIP
            >>> retriever.invoke("a dog running on the grass")  # doctest: +SKIP
        """
        from vistrieve.pipeline import RetrievalPipeline

        pipe = RetrievalPipeline.from_spec(spec)
        kwargs.setdefault("corpus", getattr(pipe.retriever, "corpus", None))
        return cls(retriever=pipe, **kwargs)

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
    ) -> list[Document]:
        n = self.k if k is None else int(k)
        if n < 1:
            raise ValueError(f"k must be positive, got {n}")
        hits = self.retriever.retrieve([parse_query(query)], k=n)[0]
        return [hit_to_document(h, self.corpus) for h in hits[:n]]


class VistrieveCompressor(BaseDocumentCompressor):
    """A vistrieve reranker as a LangChain document compressor.

    Documents need ``metadata["id"]`` (as :class:`VistrieveRetriever` writes it); they come
    back re-scored, best first, the reranker's score in ``metadata["score"]`` and under its
    stage name in ``metadata["scores"]``.

    Args:
        reranker: Anything with ``rerank(queries, candidates, top_k)``.
        top_n: Documents kept (None: all).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reranker: Any
    top_n: int | None = None

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query``."""
        if not documents:
            return []
        by_id: dict[str, Document] = {}
        hits = []
        for d in documents:
            doc_id = d.metadata.get("id", d.id)
            if doc_id is None:
                raise ValueError("documents need metadata['id'] (the corpus id) to be reranked")
            by_id[str(doc_id)] = d
            hits.append(Hit(id=str(doc_id), score=float(d.metadata.get("score", 0.0)),
                            scores=dict(d.metadata.get("scores", {}))))  # fmt: skip
        ranked = self.reranker.rerank([parse_query(query)], [hits], top_k=self.top_n)[0]
        out = []
        for h in ranked:
            old = by_id[h.id]
            meta = {**old.metadata, "score": h.score, "scores": dict(h.scores)}
            out.append(Document(page_content=old.page_content, metadata=meta, id=old.id))
        return out
