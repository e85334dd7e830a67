"""``GraceRetriever``: generative retrieval behind the common retriever interface."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vistrieve.generative.identifiers import Identifiers, extend_identifiers
from vistrieve.generative.model import GraceModel
from vistrieve.generative.train import GraceTrainConfig, train_grace
from vistrieve.types import Hit, Item, Query
from vistrieve.utils.images import load_image


class GraceRetriever:
    """Answers a query by generating identifiers with trie-constrained beam search.

    A query returns at most ``num_beams`` hits: R@K is only defined for K up to the number
    of beams, so ``retrieve(..., k)`` with ``k > num_beams`` is an error rather than a
    silently short list, and ``cost()`` reports the beam count beside the metrics.

    Args:
        model: A trained :class:`GraceModel`.
        identifiers: The identifiers it was trained on.
        num_beams: Beam width (and the most hits a query can get).
        encoder: Image encoder whose ``encode_image`` gives the features the model was
            trained on; needed for image queries and for :meth:`add`.
        batch_size: Queries per ``generate`` call.
        name: Stage name in ``Hit.scores``.
    """

    def __init__(
        self,
        model: GraceModel,
        identifiers: Identifiers,
        *,
        num_beams: int = 10,
        encoder: Any = None,
        batch_size: int = 32,
        name: str = "grace",
    ) -> None:
        if num_beams < 1:
            raise ValueError(f"num_beams must be positive, got {num_beams}")
        self.model = model.eval()
        self.identifiers = identifiers
        self.num_beams = int(num_beams)
        self.encoder = encoder
        self.batch_size = int(batch_size)
        self.name = name
        self.trie = model.build_trie(identifiers)
        self.generations = 0
        # Image features of the identified items, replayed when images are added later.
        self._feature_bank: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.identifiers)

    @property
    def ids(self) -> list[str]:
        """Identified item ids."""
        return list(self.identifiers.by_item)

    def cost(self) -> dict[str, float]:
        """Queries decoded and the beam width (the largest K for which R@K is defined)."""
        return {"generations": float(self.generations), "beams": float(self.num_beams)}

    def report_notes(self) -> list[str]:
        """Shown in evaluation reports: the beam width bounds the K of R@K."""
        return [
            f"generative retrieval ({self.identifiers.scheme} identifiers, "
            f"{len(self.identifiers)} images) with {self.num_beams} beams: at most "
            f"{self.num_beams} hits per query, so R@K is defined only for K <= {self.num_beams}"
        ]

    def _features(self, images: Sequence[Any]) -> np.ndarray:
        if self.encoder is None:
            raise ValueError(
                "image queries need the image encoder the model was trained with: "
                "GraceRetriever(..., encoder=...)"
            )
        return np.asarray(self.encoder.encode_image([load_image(im) for im in images]))

    def retrieve(self, queries: Sequence[Query], k: int = 10) -> list[list[Hit]]:
        """Top-``k`` items per query (text, dialog or image queries), best first.

        Raises:
            ValueError: ``k`` exceeds ``num_beams``, or a composed query (rewrite it to text
                first, e.g. with a query rewriter in a pipeline).
        """
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if k > self.num_beams:
            raise ValueError(
                f"k={k} exceeds num_beams={self.num_beams}: generative retrieval returns at "
                f"most one hit per beam, so R@{k} is undefined; raise num_beams to at least {k}"
            )
        out: list[list[Hit] | None] = [None] * len(queries)
        texts = [(i, q) for i, q in enumerate(queries) if q.kind in ("text", "dialog")]
        images = [(i, q) for i, q in enumerate(queries) if q.kind == "image"]
        other = [q.kind for q in queries if q.kind not in ("text", "dialog", "image")]
        if other:
            raise ValueError(
                f"GraceRetriever takes text, dialog and image queries, not {other[0]!r}; "
                "rewrite composed queries to text first"
            )
        for s in range(0, len(texts), self.batch_size):
            chunk = texts[s : s + self.batch_size]
            emb, mask = self.model.text_source([q.as_text() for _, q in chunk])
            self._decode([i for i, _ in chunk], emb, mask, k, out)
        for s in range(0, len(images), self.batch_size):
            chunk = images[s : s + self.batch_size]
            emb, mask = self.model.image_source(self._features([q.image for _, q in chunk]))
            self._decode([i for i, _ in chunk], emb, mask, k, out)
        return [hits if hits is not None else [] for hits in out]

    def _decode(
        self, rows: list[int], emb: Any, mask: Any, k: int, out: list[list[Hit] | None]
    ) -> None:
        ranked = self.model.generate(
            emb, mask, self.trie, num_beams=self.num_beams, max_new_tokens=self.trie.depth + 1
        )
        self.generations += len(rows)
        for r, cands in zip(rows, ranked, strict=True):
            out[r] = [
                Hit(
                    id=item,
                    score=score,
                    scores={self.name: score},
                    metadata={"identifier": self.identifiers[item]},
                )
                for item, score in cands[:k]
            ]

    def add(
        self,
        items: Mapping[str, Item],
        *,
        queries: Sequence[tuple[str, str]] = (),
        config: GraceTrainConfig | None = None,
        progress: bool = True,
    ) -> Identifiers:
        """Give new images identifiers and memorise them (further training steps).

        Memorise batches replay the old images too (``train_grace`` samples from every
        identified image), so the existing map is kept. ``queries`` may add pseudo-queries
        of the new images for a retrieve stage. Returns the extended identifiers.
        """
        new_ids = list(items)
        feats = self._features([items[i].image for i in new_ids])
        captions = [items[i].captions[0] if items[i].captions else i for i in new_ids]
        emb = None
        if self.identifiers.scheme == "structured":
            old = self._features_cache_for_structured()
            emb = np.concatenate([feats, old])
        extended = extend_identifiers(self.identifiers, new_ids, captions=captions, embeddings=emb)
        self.model.add_identifier_tokens(extended)
        all_feats = dict(self._feature_bank)
        all_feats.update(zip(new_ids, feats, strict=True))
        cfg = config or GraceTrainConfig(memorise_steps=200, retrieve_steps=0)
        train_grace(self.model, extended, all_feats, list(queries), cfg, progress=progress)
        self._feature_bank = all_feats
        self.identifiers = extended
        self.trie = self.model.build_trie(extended)
        return extended

    def set_feature_bank(self, features: Mapping[str, np.ndarray]) -> None:
        """Image features of the identified items (replayed when :meth:`add` trains)."""
        missing = [i for i in self.identifiers.by_item if i not in features]
        if missing:
            raise ValueError(f"no features for {len(missing)} items, e.g. {missing[0]!r}")
        self._feature_bank = {i: np.asarray(features[i]) for i in self.identifiers.by_item}

    def _features_cache_for_structured(self) -> np.ndarray:
        if not self._feature_bank:
            raise ValueError("call set_feature_bank(features) before adding images")
        return np.stack([self._feature_bank[i] for i in self.identifiers.by_item])

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Model, tokenizer, identifiers, the feature bank (when set) and ``retriever.json``
        (kind, beam width and the image encoder's spec, so that
        :func:`vistrieve.retrievers.load_retriever` reopens it)."""
        from vistrieve.encoders import encoder_spec
        from vistrieve.utils.io import FORMAT_VERSION, atomic_save_npy, atomic_write_json

        self.model.save(directory, self.identifiers)
        if self._feature_bank:
            atomic_save_npy(
                os.path.join(directory, "features.npy"),
                np.stack([self._feature_bank[i] for i in self.identifiers.by_item]),
            )
            atomic_write_json(os.path.join(directory, "features_ids.json"), self.ids)
        atomic_write_json(
            os.path.join(directory, "retriever.json"),
            {
                "format_version": FORMAT_VERSION,
                "kind": "grace",
                "name": self.name,
                "num_beams": self.num_beams,
                "encoder": encoder_spec(self.encoder) if self.encoder is not None else None,
                "encoder_name": getattr(self.encoder, "name", None),
            },
        )

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        encoder: Any = None,
        adapter: str | os.PathLike[str] | None = None,
        **kw: Any,
    ) -> GraceRetriever:
        """A retriever saved by :meth:`save` (pass the image encoder for image queries;
        ``adapter``: the output of ``vistrieve finetune grace``, merged into the LM)."""
        from vistrieve.utils.io import load_npy, read_json

        model, identifiers = GraceModel.load(directory)
        if adapter is not None:
            from vistrieve.adapters import load_finetuned

            model.lm = load_finetuned(model.lm, adapter, stage="grace")
        if identifiers is None:
            raise FileNotFoundError(f"{directory} holds a GRACE model but no identifiers.json")
        ret = cls(model, identifiers, encoder=encoder, **kw)
        feats = os.path.join(directory, "features.npy")
        if os.path.isfile(feats):
            ids = read_json(os.path.join(directory, "features_ids.json"))
            ret.set_feature_bank(dict(zip(ids, load_npy(feats), strict=True)))
        return ret
