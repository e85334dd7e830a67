"""The Q-Former as a reranker: candidate images' patch tokens cached, pairs scored in batches,
and a self-describing directory that :func:`load_qformer_reranker` reopens with the dual
encoder it was trained on.

Layout of a saved Q-Former::

    qformer.safetensors   weights (float32, or float16 for the copy shipped in the package)
    qformer_config.json   {"format_version", "kind": "qformer", "config", "token_ids", "name",
                           "image_tower": the dual encoder's spec}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from vistrieve.rerankers.base import PairwiseReranker
from vistrieve.rerankers.qformer.features import (
    clip_pair_similarity,
    patch_tokens,
    text_tokenizer,
)
from vistrieve.rerankers.qformer.model import QFormerConfig, QFormerCrossEncoder, TextVocabulary
from vistrieve.types import Item
from vistrieve.utils.io import FORMAT_VERSION, atomic_write, atomic_write_json, read_json

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "qformer.safetensors"
CONFIG_FILE = "qformer_config.json"
EMBEDDED = Path("embedded")
"""Pass as the directory to load the Q-Former that ships in the package (shapes world)."""
EMBEDDED_NAME = "shapes-qformer"


def embedded_files() -> tuple[Path, Path]:
    """Weights and config of the Q-Former that ships in the package."""
    from vistrieve.encoders.embedded import WEIGHTS_DIR

    return WEIGHTS_DIR / f"{EMBEDDED_NAME}.safetensors", WEIGHTS_DIR / f"{EMBEDDED_NAME}.json"


def _files(directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    root = Path(directory)
    if root == EMBEDDED:
        return embedded_files()
    return root / WEIGHTS_FILE, root / CONFIG_FILE


def read_qformer_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON description of a saved Q-Former (config, vocabulary, name, image tower).

    Raises:
        FileNotFoundError: ``directory`` holds no saved Q-Former.
    """
    _, config = _files(directory)
    if not config.is_file():
        raise FileNotFoundError(f"missing {config}; is {directory} a saved Q-Former?")
    return dict(read_json(config))


class QFormerReranker(PairwiseReranker):
    """Reranker around a trained :class:`QFormerCrossEncoder`.

    Args:
        model: The cross-encoder.
        vocabulary: Text vocabulary used in training.
        image_tokens: Callable mapping a list of images to patch tokens (N, P, image_dim)
            (the frozen image tower).
        corpus: Items by id; candidate images come from here (their tokens are cached).
        name: Stage name in ``Hit.scores``.
        batch_size: Pairs per forward pass.
        dense: ``(texts, image ids) -> cosines`` of the dual encoder the model was trained
            with; required by ``dense_residual`` models (see :func:`clip_pair_similarity`).
        image_tower: Spec of the dual encoder whose image tower (and tokenizer, and cosine)
            the model reads, saved so that :func:`load_qformer_reranker` rebuilds it.
    """

    def __init__(
        self,
        model: QFormerCrossEncoder,
        vocabulary: TextVocabulary,
        image_tokens: Callable[[list[Any]], torch.Tensor],
        corpus: Mapping[str, Item],
        *,
        name: str = "qformer",
        batch_size: int = 256,
        dense: Callable[[Sequence[str], Sequence[str]], torch.Tensor] | None = None,
        image_tower: Mapping[str, Any] | None = None,
    ) -> None:
        if model.config.dense_residual and dense is None:
            raise ValueError(
                "this Q-Former was trained on top of a dual encoder's score: pass dense= "
                "(e.g. clip_pair_similarity(encoder, corpus))"
            )
        self.dense = dense
        self.image_tower = dict(image_tower) if image_tower is not None else None
        self.model = model.eval()
        self.vocabulary = vocabulary
        self.image_tokens = image_tokens
        self.corpus = corpus
        self.name = name
        self.batch_size = batch_size
        self.pairs_evaluated = 0
        self._cache: dict[str, torch.Tensor] = {}

    def cost(self) -> dict[str, float]:
        """Cumulative pairs scored and images encoded."""
        return {
            "pairs_evaluated": float(self.pairs_evaluated),
            "images_encoded": float(len(self._cache)),
        }

    def warm(self, ids: Sequence[str] | None = None) -> int:
        """Encode and cache the patch tokens of ``ids`` (default: the whole corpus) now, and
        the dense anchor's image embeddings when it caches them (:class:`PairSimilarity`),
        as LAVIS precomputes image features at index time, so that queries pay for text and
        cross-attention only. Returns how many images' patch tokens were encoded."""
        wanted = list(dict.fromkeys(self.corpus if ids is None else ids))
        todo = [i for i in wanted if i not in self._cache]
        if todo:
            self._tokens_for(todo)
        warm_dense = getattr(self.dense, "warm", None)
        if callable(warm_dense):
            # The dual encoder's image embeddings too, or each query would encode them.
            warm_dense(wanted)
        return len(todo)

    def forget(self, ids: Sequence[str]) -> None:
        """Drop cached features of ``ids`` (their images were removed or replaced)."""
        for i in ids:
            self._cache.pop(i, None)
        images = getattr(self.dense, "images", None)
        if isinstance(images, dict):
            for i in ids:
                images.pop(i, None)

    def _tokens_for(self, ids: Sequence[str]) -> torch.Tensor:
        missing = [i for i in dict.fromkeys(ids) if i not in self._cache]
        for i in missing:
            if i not in self.corpus:
                raise KeyError(f"candidate {i!r} is not in the reranker's corpus")
            if self.corpus[i].image is None:
                raise ValueError(f"candidate {i!r} has no image to rerank with")
        for s in range(0, len(missing), 256):
            chunk = missing[s : s + 256]
            toks = self.image_tokens([self.corpus[i].image for i in chunk])
            self._cache.update(zip(chunk, toks, strict=True))
        return torch.stack([self._cache[i] for i in ids])

    def score_pairs(self, texts: Sequence[str], image_ids: Sequence[str]) -> torch.Tensor:
        """Reranking logits of aligned (text, image id) pairs."""
        out = []
        with torch.inference_mode():
            for s in range(0, len(texts), self.batch_size):
                t = self.vocabulary.encode(
                    list(texts[s : s + self.batch_size]), self.model.config.max_text_len
                )
                ids = image_ids[s : s + self.batch_size]
                texts_chunk = texts[s : s + self.batch_size]
                dense = self.dense(texts_chunk, ids) if self.dense is not None else None
                out.append(self.model(self._tokens_for(ids), t, dense))
        self.pairs_evaluated += len(texts)
        return torch.cat(out) if out else torch.zeros(0)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Weights (safetensors) and config + vocabulary (JSON), written atomically."""
        from safetensors.torch import save_file

        out = Path(directory)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write(out / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
        atomic_write_json(
            out / CONFIG_FILE,
            {
                "format_version": FORMAT_VERSION,
                "kind": "qformer",
                "config": asdict(self.model.config),
                "token_ids": self.vocabulary.token_ids,
                "name": self.name,
                "image_tower": self.image_tower,
            },
        )

    @staticmethod
    def load_model(directory: str | os.PathLike[str]) -> tuple[QFormerCrossEncoder, list[int], str]:
        """The saved cross-encoder, its vocabulary's token ids, and its stage name."""
        from safetensors.torch import load_file

        weights, _ = _files(directory)
        meta = read_qformer_meta(directory)
        model = QFormerCrossEncoder(QFormerConfig(**meta["config"]))
        if not weights.is_file():
            raise FileNotFoundError(f"missing {weights}")
        # Weights may be stored in float16 (the embedded copy); compute runs in float32.
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        model.load_state_dict(state)
        return model.eval(), list(meta["token_ids"]), str(meta.get("name", "qformer"))


def load_qformer_reranker(
    directory: str | os.PathLike[str],
    corpus: Mapping[str, Item],
    *,
    adapter: str | os.PathLike[str] | None = None,
    encoder: Any = None,
    **kw: Any,
) -> QFormerReranker:
    """A saved Q-Former reranker with the dual encoder it was trained on: that encoder's image
    tower gives the patch tokens, its tokenizer the text ids, and (for ``dense_residual``
    models) its cosine the dense anchor.

    Args:
        directory: A directory written by :meth:`QFormerReranker.save`, or :data:`EMBEDDED`
            (``"embedded"``) for the copy that ships in the package.
        corpus: Items by id (candidate images come from here).
        adapter: Output of ``vistrieve finetune reranker`` (a LoRA adapter, merged on
            load, or full weights).
        encoder: The dual encoder; by default it is built from the spec the directory
            records.
        **kw: :class:`QFormerReranker` options (``name``, ``batch_size``).

    Raises:
        FileNotFoundError: not a saved Q-Former.
    """
    from vistrieve.encoders import create_encoder

    meta = read_qformer_meta(directory)
    model, token_ids, name = QFormerReranker.load_model(directory)
    if adapter is not None:
        from vistrieve.adapters import adapter_digest, load_finetuned

        model = load_finetuned(model, adapter, stage="reranker")  # type: ignore[assignment]
        name = f"{name}+finetuned:{adapter_digest(adapter)}"
    tower = meta.get("image_tower")
    if not tower:
        # Saved before directories recorded their tower: that loader always used the
        # embedded shapes model.
        from vistrieve.encoders.embedded import SHAPES_CLIP

        tower = {"name": SHAPES_CLIP}
    if encoder is None:
        encoder = create_encoder(tower, progress=False)
    vocab = TextVocabulary(text_tokenizer(encoder), token_ids)
    if model.config.dense_residual:
        kw.setdefault("dense", clip_pair_similarity(encoder, corpus))
    return QFormerReranker(
        model,
        vocab,
        patch_tokens(encoder),
        corpus,
        name=kw.pop("name", name),
        image_tower=tower,
        **kw,
    )


__all__ = [
    "CONFIG_FILE",
    "EMBEDDED",
    "WEIGHTS_FILE",
    "QFormerReranker",
    "embedded_files",
    "load_qformer_reranker",
    "read_qformer_meta",
]
