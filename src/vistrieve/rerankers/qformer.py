"""A small Q-Former cross-encoder reranker that trains on a CPU.

BLIP-2's Q-Former pattern at toy scale: learnable query tokens and the text tokens share
self-attention layers, and the queries cross-attend to the frozen image encoder's patch
tokens; an ITM head on the mean of the query outputs gives one matching logit per (text,
image) pair. Because every text token can attend to the queries that looked at the image,
the model can check that *this* colour goes with *that* shape, which a dual encoder's single
pooled vector cannot ("a red circle and a blue square" vs "a blue circle and a red square").

Training uses hard negatives mined from the first stage: for each caption, the top-ranked
images that are not a correct match, scored together with the positive under a listwise
softmax loss. Patch tokens of the frozen image tower are computed once and cached.

With ``dense_residual=True`` (the shapes recipe) the model's logit is
``cross(text, image) + s * cos(dual-encoder text, dual-encoder image)`` with a learnable
scale ``s`` and a zero-initialised ITM head: a fresh model ranks exactly as the dual encoder
does, and training spends its capacity on the pairs the dual encoder gets wrong instead of
re-learning plain matching (a fresh cross-encoder trained on hard negatives alone sits at
the uniform-logit saddle).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vistrieve.types import Hit, Item, Query
from vistrieve.utils.io import atomic_write, atomic_write_json, read_json

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "qformer.safetensors"
CONFIG_FILE = "qformer_config.json"
EMBEDDED = Path("embedded")
"""Pass as the directory to load the Q-Former that ships in the package (shapes world)."""
EMBEDDED_NAME = "shapes-qformer"


def _embedded_files() -> tuple[Path, Path]:
    from vistrieve.encoders.embedded import WEIGHTS_DIR

    return WEIGHTS_DIR / f"{EMBEDDED_NAME}.safetensors", WEIGHTS_DIR / f"{EMBEDDED_NAME}.json"


def install_embedded_qformer(directory: str | os.PathLike[str]) -> Path:
    """Copy a trained shapes Q-Former into the package (float16 weights + JSON sidecar).

    Returns the installed weights file.
    """
    from safetensors.torch import load_file, save_file

    root = Path(directory)
    weights, config = _embedded_files()
    tensors = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in load_file(str(root / WEIGHTS_FILE)).items()
    }
    atomic_write(weights, lambda p: save_file(tensors, str(p)))
    meta = read_json(root / CONFIG_FILE)
    record = root / "train_record.json"
    if record.is_file():
        meta["training"] = {k: v for k, v in read_json(record).items() if k != "losses"}
    atomic_write_json(config, meta)
    return weights


@dataclass(frozen=True)
class QFormerConfig:
    """Shape of the cross-encoder and how its signals combine into the reranking logit.

    ``captioning`` adds BLIP-2's image-grounded text generation (ITG) head: the same layers
    run with a causal mask (queries see only queries; each text token sees the queries and
    the tokens before it) and a language-model head predicts the next token, so the model
    can also score a pair by ``log p(text | image)``. The reranking logit is
    ``itm_weight * ITM + lm_weight * log p(text | image) + s * dense cosine`` (the last term
    for ``dense_residual`` models; see :meth:`QFormerCrossEncoder.forward`).
    """

    width: int = 128
    layers: int = 2
    heads: int = 4
    num_queries: int = 8
    max_text_len: int = 32
    image_dim: int = 128
    vocab_size: int = 512
    dense_residual: bool = False
    dense_scale_init: float = 20.0  # shapes-clip's logit scale
    captioning: bool = False
    image_tokens: int = 0  # > 0: a learned position embedding per image token
    itm_weight: float = 1.0
    lm_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        for name in (
            "width",
            "layers",
            "heads",
            "num_queries",
            "max_text_len",
            "image_dim",
            "vocab_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dense_scale_init <= 0:
            raise ValueError(f"dense_scale_init must be positive, got {self.dense_scale_init}")
        if self.image_tokens < 0:
            raise ValueError(f"image_tokens must be >= 0, got {self.image_tokens}")
        if self.lm_weight and not self.captioning:
            raise ValueError("lm_weight needs captioning=True (a language-model head)")


class _Attention(nn.Module):
    """Multi-head attention from four linear maps, so that one side's keys and values can be
    computed once and reused (a query's text against many images) and LoRA can target each
    projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        return x.view(b, n, self.heads, w // self.heads).transpose(1, 2)

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, heads, N, width / heads) of ``x`` (B, N, width)."""
        return self._split(self.k_proj(x)), self._split(self.v_proj(x))

    def attend(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention of ``x`` (B, N, width) over keys and values; ``allowed`` broadcasts to
        (B, heads, N, keys) and is True where a key may be attended to."""
        b, n, w = x.shape
        out = F.scaled_dot_product_attention(self._split(self.q_proj(x)), k, v, attn_mask=allowed)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class _Layer(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.self_attn = _Attention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.cross_attn = _Attention(width, heads)
        self.ln3 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def cross(self, q: torch.Tensor, image: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # Only the queries look at the image (BLIP-2's Q-Former); text reaches it through them.
        return q + self.cross_attn.attend(self.ln2(q), *image)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.ln3(x))


def _legacy_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights saved with ``nn.MultiheadAttention`` (packed ``in_proj``) in today's layout."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        stem, _, leaf = key.rpartition(".")
        if leaf in ("in_proj_weight", "in_proj_bias"):
            kind = "weight" if leaf == "in_proj_weight" else "bias"
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3), strict=True):
                out[f"{stem}.{name}.{kind}"] = part.contiguous()
        else:
            out[key] = value
    return out


def _visible(pad: torch.Tensor, n_queries: int) -> torch.Tensor:
    """(B, 1, 1, queries + T) attention mask: every query and the non-padding text."""
    queries = torch.ones(pad.shape[0], n_queries, dtype=torch.bool, device=pad.device)
    return torch.cat([queries, ~pad], 1)[:, None, None, :]


class QFormerCrossEncoder(nn.Module):
    """Queries + text tokens with cross-attention to image patch tokens: an ITM logit per
    pair and, with ``captioning``, the log-likelihood of the text given the image."""

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        c = self.config = config
        self.queries = nn.Parameter(torch.randn(c.num_queries, c.width) * 0.02)
        self.token_emb = nn.Embedding(c.vocab_size, c.width, padding_idx=0)
        self.pos_emb = nn.Parameter(torch.randn(c.max_text_len, c.width) * 0.02)
        self.image_proj = nn.Sequential(nn.LayerNorm(c.image_dim), nn.Linear(c.image_dim, c.width))
        if c.image_tokens:
            self.image_pos = nn.Parameter(torch.randn(c.image_tokens, c.width) * 0.02)
        self.layers = nn.ModuleList([_Layer(c.width, c.heads) for _ in range(c.layers)])
        self.ln = nn.LayerNorm(c.width)
        self.itm_head = nn.Linear(c.width, 1)
        if c.captioning:
            self.lm_head = nn.Linear(c.width, c.vocab_size)
        if c.dense_residual:
            # Zero head: the untrained model's ranking is the dual encoder's.
            nn.init.zeros_(self.itm_head.weight)
            nn.init.zeros_(self.itm_head.bias)
            # Log-parametrised so that the optimiser can rescale it by large factors.
            self.log_dense_scale = nn.Parameter(torch.tensor(float(np.log(c.dense_scale_init))))

    def load_state_dict(self, state_dict: Mapping[str, Any], *args: Any, **kw: Any) -> Any:
        """As nn.Module's, also accepting weights saved with packed attention projections."""
        return super().load_state_dict(_legacy_state(dict(state_dict)), *args, **kw)

    def _blocks(self) -> list[_Layer]:
        return [cast(_Layer, layer) for layer in self.layers]

    def _image(self, image_tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's cross-attention keys and values of the image tokens."""
        image = self.image_proj(image_tokens)
        if self.config.image_tokens:
            if image.shape[1] != self.config.image_tokens:
                raise ValueError(
                    f"this Q-Former was trained on {self.config.image_tokens} image tokens "
                    f"per image, got {image.shape[1]}"
                )
            image = image + self.image_pos
        return [layer.cross_attn.kv(image) for layer in self._blocks()]

    def _text(self, text_ids: torch.Tensor) -> torch.Tensor:
        t = text_ids.shape[1]
        if t > self.config.max_text_len:
            raise ValueError(
                f"text of {t} tokens exceeds max_text_len {self.config.max_text_len}; "
                "encode with TextVocabulary.encode(texts, max_len)"
            )
        return self.token_emb(text_ids) + self.pos_emb[:t]

    def itm_logit(self, image_tokens: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """ITM logits (B,) of aligned pairs: image_tokens (B, P, image_dim), text_ids (B, T).

        Exact, and cheaper than running every pair through every layer: nothing depends on
        the image until the queries have attended to it, so the first self-attention runs
        once per distinct text; text rows stay per distinct text until they attend to
        image-dependent queries; and the last layer computes only the query rows, which
        are all that the ITM head reads.
        """
        return self._itm(self._image(image_tokens), text_ids)

    def _itm(
        self, image: list[tuple[torch.Tensor, torch.Tensor]], text_ids: torch.Tensor
    ) -> torch.Tensor:
        nq = self.config.num_queries
        uniq, inverse = torch.unique(text_ids, dim=0, return_inverse=True)
        pad_u = uniq == 0
        first = self._blocks()[0]
        x = torch.cat([self.queries.expand(len(uniq), -1, -1), self._text(uniq)], 1)
        h = first.ln1(x)
        x = x + first.self_attn.attend(h, *first.self_attn.kv(h), allowed=_visible(pad_u, nq))
        q = first.ffn(first.cross(x[:, :nq][inverse], image[0]))
        text = first.ffn(x[:, nq:])
        text_index: torch.Tensor | None = inverse  # text rows: per distinct text, or per pair
        pad = pad_u[inverse]
        for i, layer in enumerate(self._blocks()[1:], start=1):
            hq, ht = layer.ln1(q), layer.ln1(text)
            kq, vq = layer.self_attn.kv(hq)
            kt, vt = layer.self_attn.kv(ht)
            if text_index is not None:
                kt, vt = kt[text_index], vt[text_index]
            k, v, allowed = torch.cat([kq, kt], 2), torch.cat([vq, vt], 2), _visible(pad, nq)
            if i < len(self.layers) - 1:
                if text_index is not None:
                    text, ht, text_index = text[text_index], ht[text_index], None
                text = layer.ffn(text + layer.self_attn.attend(ht, k, v, allowed))
            q = layer.ffn(layer.cross(q + layer.self_attn.attend(hq, k, v, allowed), image[i]))
        return self.itm_head(self.ln(q).mean(1)).squeeze(-1)

    def text_logprob(self, image_tokens: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """``log p(text | image)`` (B,) of aligned pairs under the captioning head: the sum
        of :meth:`token_logprobs`."""
        return self.token_logprobs(image_tokens, text_ids).sum(1)

    def token_logprobs(self, image_tokens: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """(B, T - 1): the log-probability of each text token after the first (the start
        token) given the image and the tokens before it; 0 at padding."""
        if not self.config.captioning:
            raise ValueError("this Q-Former has no captioning head (QFormerConfig.captioning)")
        return self._token_logprobs(self._image(image_tokens), text_ids)

    def _token_logprobs(
        self, image: list[tuple[torch.Tensor, torch.Tensor]], text_ids: torch.Tensor
    ) -> torch.Tensor:
        # Shared work as in itm_logit: the queries never see text, so until they attend to
        # the image they are the same for every pair, and layer 0's text rows (which see
        # only those queries and earlier tokens) are computed once per distinct text; the
        # last layer skips the query rows, which the language-model head does not read.
        uniq, inverse = torch.unique(text_ids, dim=0, return_inverse=True)
        t = uniq.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=text_ids.device).tril()
        # Text rows see every query and the earlier non-padding tokens.
        allowed_u = torch.cat(
            [
                torch.ones(len(uniq), 1, t, self.config.num_queries, dtype=torch.bool,
                           device=text_ids.device),
                causal[None, None] & (uniq != 0)[:, None, None, :],
            ],
            -1,
        )  # fmt: skip
        first = self._blocks()[0]
        q0 = self.queries[None]
        hq, text = first.ln1(q0), self._text(uniq)
        ht = first.ln1(text)
        kq, vq = first.self_attn.kv(hq)
        kt, vt = first.self_attn.kv(ht)
        k = torch.cat([kq.expand(len(uniq), -1, -1, -1), kt], 2)
        v = torch.cat([vq.expand(len(uniq), -1, -1, -1), vt], 2)
        text = first.ffn(text + first.self_attn.attend(ht, k, v, allowed_u))[inverse]
        q = q0 + first.self_attn.attend(hq, kq, vq)
        q = first.ffn(first.cross(q.expand(len(text_ids), -1, -1), image[0]))
        allowed = allowed_u[inverse]
        for i, layer in enumerate(self._blocks()[1:], start=1):
            hq, ht = layer.ln1(q), layer.ln1(text)
            kq, vq = layer.self_attn.kv(hq)
            kt, vt = layer.self_attn.kv(ht)
            k, v = torch.cat([kq, kt], 2), torch.cat([vq, vt], 2)
            text = layer.ffn(text + layer.self_attn.attend(ht, k, v, allowed))
            if i < len(self.layers) - 1:
                q = layer.ffn(layer.cross(q + layer.self_attn.attend(hq, kq, vq), image[i]))
        logits = self.lm_head(self.ln(text[:, :-1]))
        target = text_ids[:, 1:]
        logp = torch.log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return logp * (target != 0)

    def forward(
        self,
        image_tokens: torch.Tensor,
        text_ids: torch.Tensor,
        dense: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reranking logits (B,) of aligned pairs: image_tokens (B, P, image_dim), text_ids
        (B, T); ``dense`` (B,) is the dual encoder's cosine of each pair (``dense_residual``
        models). The logit is ``itm_weight * ITM + lm_weight * log p(text | image)``, plus
        the learned scale times ``dense``."""
        matching, lm = self.score_terms(
            image_tokens, text_ids, dense, captioning=bool(self.config.lm_weight)
        )
        return matching if lm is None else matching + self.config.lm_weight * lm

    def score_terms(
        self,
        image_tokens: torch.Tensor,
        text_ids: torch.Tensor,
        dense: torch.Tensor | None = None,
        *,
        captioning: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The two terms of the reranking logit, with the image encoded once for both:
        :meth:`matching_logit` and, when ``captioning`` (and the model has the head),
        :meth:`text_logprob` (else None)."""
        image = self._image(image_tokens)
        matching = self._matching(image, text_ids, dense)
        if not (captioning and self.config.captioning):
            return matching, None
        return matching, self._token_logprobs(image, text_ids).sum(1)

    def matching_logit(
        self,
        image_tokens: torch.Tensor,
        text_ids: torch.Tensor,
        dense: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``itm_weight * ITM`` plus the scaled dense cosine: the logit without the
        captioning term (what listwise training optimises)."""
        return self._matching(self._image(image_tokens), text_ids, dense)

    def _matching(
        self,
        image: list[tuple[torch.Tensor, torch.Tensor]],
        text_ids: torch.Tensor,
        dense: torch.Tensor | None,
    ) -> torch.Tensor:
        c = self.config
        if c.dense_residual and dense is None:
            raise ValueError("this Q-Former adds the dual-encoder score: pass dense= cosines")
        logit = self._itm(image, text_ids)
        if c.itm_weight != 1.0:
            logit = c.itm_weight * logit
        if c.dense_residual:
            assert dense is not None
            logit = logit + self.log_dense_scale.exp() * dense.to(logit.dtype)
        return logit


class TextVocabulary:
    """Maps a base tokenizer's ids onto a compact vocabulary built from training texts.

    Row 0 is padding and row 1 stands for every token not seen in training.
    """

    def __init__(
        self, tokenize: Callable[[list[str]], torch.Tensor], token_ids: Sequence[int]
    ) -> None:
        self.tokenize = tokenize
        self.token_ids = [int(t) for t in token_ids]
        # A lookup table from base ids to compact ids: mapping is one numpy gather.
        size = max(self.token_ids, default=0) + 1
        self._lut = np.ones(size, dtype=np.int64)
        self._lut[0] = 0
        if self.token_ids:
            self._lut[np.asarray(self.token_ids)] = np.arange(2, len(self.token_ids) + 2)
        # Compact ids per text: a query's text is scored against many candidates.
        self._cache: dict[tuple[str, int], torch.Tensor] = {}
        self.max_cached = 100_000

    @classmethod
    def build(
        cls, tokenize: Callable[[list[str]], torch.Tensor], texts: Sequence[str]
    ) -> TextVocabulary:
        """A vocabulary of every token id the texts use."""
        ids: set[int] = set()
        for s in range(0, len(texts), 1024):
            ids.update(int(x) for x in tokenize(list(texts[s : s + 1024])).flatten().tolist())
        ids.discard(0)
        return cls(tokenize, sorted(ids))

    def __len__(self) -> int:
        return len(self.token_ids) + 2

    def _map(self, raw: np.ndarray) -> np.ndarray:
        inside = raw < len(self._lut)
        return np.where(inside, self._lut[np.where(inside, raw, 0)], 1) * (raw != 0)

    def encode(self, texts: list[str], max_len: int) -> torch.Tensor:
        """Compact ids (len(texts), max_len), 0-padded, unknown tokens mapped to 1.

        Each distinct text is tokenised once and remembered (up to ``max_cached`` texts).
        """
        todo = [t for t in dict.fromkeys(texts) if (t, max_len) not in self._cache]
        if todo:
            if len(self._cache) + len(todo) > self.max_cached:
                self._cache.clear()
            raw = np.asarray(self.tokenize(todo))[:, :max_len].astype(np.int64)
            mapped = torch.from_numpy(self._map(raw))
            for t, row in zip(todo, mapped, strict=True):
                self._cache[(t, max_len)] = row
        if not texts:
            return torch.zeros((0, max_len), dtype=torch.long)
        rows = [self._cache[(t, max_len)] for t in texts]
        width = max(len(r) for r in rows)
        return torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])


class QFormerReranker:
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
    ) -> None:
        if model.config.dense_residual and dense is None:
            raise ValueError(
                "this Q-Former was trained on top of a dual encoder's score: pass dense= "
                "(e.g. clip_pair_similarity(encoder, corpus))"
            )
        self.dense = dense
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
        """ITM logits of aligned (text, image id) pairs."""
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

    def rerank(
        self,
        queries: Sequence[Query],
        candidates: Sequence[Sequence[Hit]],
        top_k: int | None = None,
    ) -> list[list[Hit]]:
        """Re-score each query's candidates, best first (empty lists stay empty)."""
        if len(queries) != len(candidates):
            raise ValueError(f"{len(queries)} queries but {len(candidates)} candidate lists")
        texts: list[str] = []
        ids: list[str] = []
        for q, cands in zip(queries, candidates, strict=True):
            if q.kind == "image":
                raise ValueError("the Q-Former reranker needs query text; got an image-only query")
            texts.extend([q.as_text()] * len(cands))
            ids.extend(h.id for h in cands)
        scores = self.score_pairs(texts, ids) if ids else torch.zeros(0)
        out, pos = [], 0
        for cands in candidates:
            ranked = [h.with_stage(self.name, float(scores[pos + j])) for j, h in enumerate(cands)]
            pos += len(cands)
            ranked.sort(key=lambda h: -h.score)
            out.append(ranked[:top_k] if top_k is not None else ranked)
        return out

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Weights (safetensors) and config + vocabulary (JSON), written atomically."""
        from safetensors.torch import save_file

        out = Path(directory)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write(out / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
        atomic_write_json(
            out / CONFIG_FILE,
            {
                "config": asdict(self.model.config),
                "token_ids": self.vocabulary.token_ids,
                "name": self.name,
            },
        )

    @staticmethod
    def load_model(directory: str | os.PathLike[str]) -> tuple[QFormerCrossEncoder, list[int], str]:
        """The saved cross-encoder, its vocabulary's token ids, and its stage name."""
        from safetensors.torch import load_file

        root = Path(directory)
        if root == EMBEDDED:
            weights, config = _embedded_files()
        else:
            weights, config = root / WEIGHTS_FILE, root / CONFIG_FILE
        if not config.is_file():
            raise FileNotFoundError(f"missing {config}; is {directory} a saved Q-Former?")
        meta = read_json(config)
        model = QFormerCrossEncoder(QFormerConfig(**meta["config"]))
        if not weights.is_file():
            raise FileNotFoundError(f"missing {weights}")
        # Weights may be stored in float16 (the embedded copy); compute runs in float32.
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        model.load_state_dict(state)
        return model.eval(), list(meta["token_ids"]), str(meta.get("name", "qformer"))


def clip_patch_tokens(encoder: Any) -> Callable[[list[Any]], torch.Tensor]:
    """Patch tokens (N, P, width) of an open_clip ViT encoder's frozen image tower."""
    from vistrieve.utils.images import load_image

    visual = encoder.model.visual

    def fn(images: list[Any]) -> torch.Tensor:
        pixels = torch.stack([encoder.preprocess(load_image(im)) for im in images])
        old = visual.output_tokens
        visual.output_tokens = True
        try:
            with torch.inference_mode():
                _, tokens = visual(pixels)
        finally:
            visual.output_tokens = old
        # A copy made outside inference mode: inference tensors cannot take part in training.
        return tokens.float().clone()

    return fn


class PairSimilarity:
    """``(texts, image ids) -> cosines`` of a dual encoder, caching both sides' embeddings.

    The dense anchor of a ``dense_residual`` Q-Former. Image embeddings are cached per id
    (:meth:`warm` encodes them ahead of queries), text embeddings per string (a query's text
    is encoded once for all its candidates).
    """

    def __init__(
        self, encoder: Any, corpus: Mapping[str, Item], *, max_cached_texts: int = 100_000
    ) -> None:
        self.encoder = encoder
        self.corpus = corpus
        self.max_cached_texts = max_cached_texts
        self.images: dict[str, np.ndarray] = {}
        self.texts: dict[str, np.ndarray] = {}

    def warm(self, ids: Sequence[str]) -> int:
        """Encode and cache the images of ``ids``; returns how many were new."""
        from vistrieve.utils.images import load_image

        new_ids = [i for i in dict.fromkeys(ids) if i not in self.images]
        for i in new_ids:
            if i not in self.corpus:
                raise KeyError(f"candidate {i!r} is not in the reranker's corpus")
        for s in range(0, len(new_ids), 256):
            chunk = new_ids[s : s + 256]
            emb = self.encoder.encode_image([load_image(self.corpus[i].image) for i in chunk])
            self.images.update(zip(chunk, emb, strict=True))
        return len(new_ids)

    def __call__(self, batch_texts: Sequence[str], ids: Sequence[str]) -> torch.Tensor:
        self.warm(ids)
        new_texts = [t for t in dict.fromkeys(batch_texts) if t not in self.texts]
        if new_texts:
            if len(self.texts) + len(new_texts) > self.max_cached_texts:
                self.texts.clear()
            self.texts.update(zip(new_texts, self.encoder.encode_text(new_texts), strict=True))
        a = np.stack([self.texts[t] for t in batch_texts])
        b = np.stack([self.images[i] for i in ids])
        return torch.from_numpy((a * b).sum(1).astype(np.float32))


def clip_pair_similarity(
    encoder: Any, corpus: Mapping[str, Item], *, max_cached_texts: int = 100_000
) -> PairSimilarity:
    """The dual encoder's pair cosine with caches (see :class:`PairSimilarity`)."""
    return PairSimilarity(encoder, corpus, max_cached_texts=max_cached_texts)


def sample_listwise(
    rng: np.random.Generator,
    positives: Sequence[set[int]],
    negatives: Sequence[Sequence[int]],
    n_images: int,
    batch_size: int,
    n_neg: int,
    n_hard: int,
) -> tuple[np.ndarray, torch.Tensor]:
    """A listwise batch: ``batch_size`` caption rows and, for each, its positive image row
    first, then ``n_hard`` mined negatives and random non-positive images up to ``n_neg``.

    Returns:
        ``(caption rows (B,), image rows (B, 1 + n_neg))``.
    """
    rows = rng.choice(len(positives), size=min(batch_size, len(positives)), replace=False)
    img_idx = []
    for r in rows:
        pos = sorted(positives[r])
        negs = [n for n in negatives[r] if n not in positives[r]][:n_hard]
        while len(negs) < n_neg:
            cand = int(rng.integers(n_images))
            if cand not in positives[r]:
                negs.append(cand)
        img_idx.append([pos[int(rng.integers(len(pos)))], *negs])
    return rows, torch.tensor(img_idx)


def listwise_loss(
    model: nn.Module,
    image_tokens: torch.Tensor,
    text_ids: torch.Tensor,
    rows: np.ndarray,
    idx: torch.Tensor,
    dense: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Cross-entropy of the positive (column 0 of ``idx``) among each caption's list."""
    b, width = idx.shape
    trows = torch.from_numpy(np.asarray(rows)).repeat_interleave(width)
    cos = None
    if dense is not None:
        cos = (dense[0][trows] * dense[1][idx.flatten()]).sum(-1)
    score = model.matching_logit if isinstance(model, QFormerCrossEncoder) else model
    logits = score(image_tokens[idx.flatten()], text_ids[trows], cos).view(b, width)
    return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=logits.device))


def captioning_loss(
    model: QFormerCrossEncoder,
    image_tokens: torch.Tensor,
    text_ids: torch.Tensor,
    caption_rows: np.ndarray,
    image_rows: np.ndarray,
) -> torch.Tensor:
    """BLIP-2's image-grounded text generation loss: the mean negative log-likelihood per
    token of each caption given its image (rows of ``text_ids`` and ``image_tokens``)."""
    ids = text_ids[torch.from_numpy(np.asarray(caption_rows))]
    logp = model.text_logprob(image_tokens[torch.from_numpy(np.asarray(image_rows))], ids)
    return -logp.sum() / (ids[:, 1:] != 0).sum().clamp(min=1)


def train_qformer(
    model: QFormerCrossEncoder,
    vocabulary: TextVocabulary,
    image_tokens: torch.Tensor,
    texts: Sequence[str],
    positives: Sequence[set[int]],
    negatives: Sequence[Sequence[int]],
    *,
    steps: int = 1000,
    batch_size: int = 32,
    n_neg: int = 7,
    n_hard: int | None = None,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    dense: tuple[torch.Tensor, torch.Tensor] | None = None,
    captioning_steps: int = 0,
    captioning_weight: float = 1.0,
    captioning_batch_size: int = 64,
) -> list[float]:
    """Listwise ITM training: each caption's positive against ``n_neg`` mined hard
    negatives; for ``captioning`` models, BLIP-2's captioning loss as well.

    Args:
        model: The cross-encoder to train.
        vocabulary: Text vocabulary.
        image_tokens: Cached patch tokens of every training image (N, P, image_dim).
        texts: Training captions.
        positives: For each caption, the image rows that match it.
        negatives: For each caption, hard-negative image rows (best first).
        steps: Optimiser steps (including ``captioning_steps``).
        batch_size: Captions per step (listwise ITM).
        n_neg: Negatives per caption.
        n_hard: How many of them are mined hard negatives (default half); the rest are
            random images. All-hard batches leave a fresh model at the uniform-logit
            saddle (loss ln(n_neg + 1)); random ones teach plain matching first.
        lr: AdamW learning rate.
        seed: Sampling seed.
        progress: Show a progress bar.
        dense: ``(text_embeddings, image_embeddings)`` of the dual encoder (L2-normalised,
            rows aligned with ``texts`` and ``image_tokens``), for ``dense_residual`` models.
        captioning_steps: Steps of captioning loss alone before the ITM loss joins in. The
            per-token captioning signal teaches the queries to read the image (which
            object has which shape) far faster than one ITM bit per pair does.
        captioning_weight: Weight of the captioning loss (0: none) in the joint steps.
        captioning_batch_size: Captions (each with one of its positive images) per step.

    Returns:
        The loss of every step (ITM + weighted captioning; captioning alone at first).
    """
    from tqdm.auto import tqdm

    captioning = model.config.captioning and (captioning_weight > 0 or captioning_steps > 0)
    if captioning_steps and not model.config.captioning:
        raise ValueError("captioning_steps needs a model with QFormerConfig(captioning=True)")
    if not 0 <= captioning_steps <= steps:
        raise ValueError(f"captioning_steps must be in [0, steps={steps}], got {captioning_steps}")
    hard = n_neg // 2 if n_hard is None else min(n_hard, n_neg)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    text_ids = vocabulary.encode(list(texts), model.config.max_text_len)
    pos_lists = [sorted(p) for p in positives]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    model.train()
    losses = []
    n_img = image_tokens.shape[0]
    bar = tqdm(range(steps), desc="train qformer", disable=not progress)
    for step in bar:
        loss = torch.zeros(())
        if step >= captioning_steps:
            rows, idx = sample_listwise(rng, positives, negatives, n_img, batch_size, n_neg, hard)
            loss = listwise_loss(model, image_tokens, text_ids, rows, idx, dense)
        weight = 1.0 if step < captioning_steps else captioning_weight
        if captioning and weight:
            size = min(captioning_batch_size, len(texts))
            crow = rng.choice(len(texts), size=size, replace=False)
            irow = np.array([pos_lists[r][int(rng.integers(len(pos_lists[r])))] for r in crow])
            loss = loss + weight * captioning_loss(model, image_tokens, text_ids, crow, irow)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    return losses


def timm_patch_tokens(encoder: Any) -> Callable[[list[Any]], torch.Tensor]:
    """Patch tokens (N, H*W, C) of a frozen timm CNN image tower's last feature map.

    For encoders with an ``image_tower`` exposing timm's ``forward_features`` (the LiT
    baseline's EfficientNet-Lite0: 7 x 7 x 1280 at 224 px) and a ``preprocess`` transform.
    """
    from vistrieve.utils.images import load_image

    tower = encoder.image_tower

    def fn(images: list[Any]) -> torch.Tensor:
        pixels = torch.stack([encoder.preprocess(load_image(im)) for im in images])
        with torch.inference_mode():
            fmap = tower.forward_features(pixels.to(next(tower.parameters()).device))
        return fmap.flatten(2).transpose(1, 2).float().cpu().clone()

    return fn


def _logit_scale(encoder: Any) -> float:
    """The dual encoder's trained softmax scale (open_clip ``model``, LiT ``heads``), else 20."""
    for owner in (getattr(encoder, "model", None), getattr(encoder, "heads", None)):
        scale = getattr(owner, "logit_scale", None)
        if isinstance(scale, torch.Tensor):
            return float(scale.detach().exp())
    return 20.0


@dataclass
class MinedData:
    """Listwise training data mined by a first stage (see :func:`mine_training_data`)."""

    items: list[Item]
    image_tokens: torch.Tensor
    texts: list[str]
    positives: list[set[int]]
    negatives: list[list[int]]
    dense: tuple[torch.Tensor, torch.Tensor] | None
    extra_positives: int


def mine_training_data(
    encoder: Any,
    corpus: Mapping[str, Item],
    tokens_fn: Callable[[list[Any]], torch.Tensor],
    *,
    k_mine: int = 16,
    positives_of: Callable[[str, str, list[str]], set[str]] | None = None,
    dense_residual: bool = True,
) -> MinedData:
    """(caption, positive images, hard negatives) for every caption of ``corpus``: the
    first stage's top ``k_mine`` images minus the positives, plus the frozen image tower's
    patch tokens and, for ``dense_residual`` models, the dual encoder's embeddings."""
    from vistrieve.retrievers.dense import DenseRetriever

    items = [it for it in corpus.values() if it.image is not None and it.captions]
    if not items:
        raise ValueError("the training corpus has no items with both an image and captions")
    image_tokens = torch.cat(
        [tokens_fn([it.image for it in items[s : s + 256]]) for s in range(0, len(items), 256)]
    )
    row = {it.id: i for i, it in enumerate(items)}
    texts = [c for it in items for c in it.captions]
    owners = [it.id for it in items for _ in it.captions]
    dense = DenseRetriever.build(encoder, {it.id: it for it in items}, index_captions=False)
    hits: list[list[Hit]] = []
    for s in range(0, len(texts), 512):
        hits.extend(dense.retrieve([Query(text=t) for t in texts[s : s + 512]], k=k_mine))
    positives: list[set[int]] = []
    negatives: list[list[int]] = []
    n_extra = 0
    for t, o, hs in zip(texts, owners, hits, strict=True):
        mined = [h.id for h in hs]
        extra = positives_of(t, o, mined) if positives_of is not None else set()
        n_extra += len(extra - {o})
        pos = {row[o]} | {row[i] for i in extra}
        positives.append(pos)
        negatives.append([row[i] for i in mined if row[i] not in pos])
    dense_emb = None
    if dense_residual:
        text_emb = torch.from_numpy(np.ascontiguousarray(encoder.encode_text(texts)))
        image_emb = torch.from_numpy(
            np.ascontiguousarray(encoder.encode_image([it.image for it in items]))
        )
        dense_emb = (text_emb.float(), image_emb.float())
    return MinedData(items, image_tokens, texts, positives, negatives, dense_emb, n_extra)


def choose_lm_weight(
    model: QFormerCrossEncoder,
    vocabulary: TextVocabulary,
    data: MinedData,
    weights: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0),
    *,
    max_captions: int = 2000,
    seed: int = 0,
    batch_size: int = 512,
) -> dict[float, float]:
    """Validation R@1 (%) among each caption's mined candidates for each ``lm_weight``
    (the weight of ``log p(text | image)`` in the reranking logit), on up to
    ``max_captions`` captions of ``data`` (mined on a validation corpus)."""
    if not model.config.captioning:
        raise ValueError("choose_lm_weight needs a model with a captioning head")
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(data.texts))[:max_captions]
    text_ids = vocabulary.encode(list(data.texts), model.config.max_text_len)
    pairs = [(r, c) for r in rows for c in sorted(data.positives[r]) + list(data.negatives[r])]
    base_parts, lm_parts = [], []
    model.eval()
    with torch.inference_mode():
        for s in range(0, len(pairs), batch_size):
            tr = torch.tensor([r for r, _ in pairs[s : s + batch_size]])
            ir = torch.tensor([c for _, c in pairs[s : s + batch_size]])
            cos = None
            if data.dense is not None and model.config.dense_residual:
                cos = (data.dense[0][tr] * data.dense[1][ir]).sum(-1)
            matching, lm = model.score_terms(data.image_tokens[ir], text_ids[tr], cos)
            assert lm is not None  # a captioning model, checked above
            base_parts.append(matching)
            lm_parts.append(lm)
    base, lm = torch.cat(base_parts), torch.cat(lm_parts)
    out: dict[float, float] = {}
    for w in weights:
        score, pos, hits = base + w * lm, 0, 0
        for r in rows:
            n_pos, n_neg = len(data.positives[r]), len(data.negatives[r])
            own = score[pos : pos + n_pos + n_neg]
            # A tie with a negative counts as a miss: no credit for candidate order.
            hits += n_neg == 0 or bool(own[:n_pos].max() > own[n_pos:].max())
            pos += n_pos + n_neg
        out[float(w)] = 100.0 * hits / max(len(rows), 1)
    return out


def train_qformer_reranker(
    encoder: Any,
    corpus: Mapping[str, Item],
    tokens_fn: Callable[[list[Any]], torch.Tensor],
    tokenize: Callable[[list[str]], torch.Tensor],
    out: str | os.PathLike[str],
    *,
    steps: int = 1000,
    k_mine: int = 16,
    n_hard: int | None = None,
    batch_size: int = 32,
    lr: float = 2e-3,
    dense_residual: bool = True,
    positives_of: Callable[[str, str, list[str]], set[str]] | None = None,
    seed: int = 0,
    progress: bool = True,
    command: str = "",
    layers: int = 2,
    captioning_steps: int = 0,
    captioning_weight: float = 0.0,
    val_corpus: Mapping[str, Item] | None = None,
    lm_weights: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0),
) -> dict[str, Any]:
    """Mine hard negatives with ``encoder`` over ``corpus`` and train a Q-Former on them.

    Args:
        encoder: The first-stage dual encoder (mines negatives; its cosine is the dense
            anchor of a ``dense_residual`` model).
        corpus: Training items with images and captions.
        tokens_fn: Images -> patch tokens of the frozen image tower.
        tokenize: Texts -> base-tokenizer ids (0 = padding); a compact vocabulary is built.
        out: Output directory (weights, config, vocabulary, ``train_record.json``).
        steps, k_mine, n_hard, batch_size, lr, seed, progress: Training settings.
        dense_residual: Add the dual encoder's scaled cosine to the logit.
        positives_of: ``(caption, owner id, mined ids) -> extra positive ids`` among the
            mined candidates (true matches that are not the caption's own image); by default
            only the owner is a positive.
        command: Recorded in ``train_record.json``.
        layers: Q-Former layers.
        captioning_steps: Steps of BLIP-2's captioning loss alone before listwise ITM
            training (see :func:`train_qformer`); with ``captioning_weight``, any value
            above 0 gives the model a captioning head.
        captioning_weight: Weight of the captioning loss during the ITM steps.
        val_corpus: Validation items (mined the same way) on which the weight of
            ``log p(text | image)`` in the reranking logit is chosen among ``lm_weights``
            by R@1 over the mined candidates; without it a captioning model ranks by ITM
            (and the dense residual) alone.
        lm_weights: Candidate weights for that choice.

    Returns:
        The training record (timings, first and final loss, parameter count, and the
        validation R@1 of each ``lm_weight`` when chosen).
    """
    t0 = time.perf_counter()
    mined = mine_training_data(
        encoder,
        corpus,
        tokens_fn,
        k_mine=k_mine,
        positives_of=positives_of,
        dense_residual=dense_residual,
    )
    image_tokens, texts, positives, negatives = (
        mined.image_tokens,
        mined.texts,
        mined.positives,
        mined.negatives,
    )
    dense_emb, n_extra, items = mined.dense, mined.extra_positives, mined.items
    t1 = time.perf_counter()
    vocab = TextVocabulary.build(tokenize, texts)
    captioning = captioning_steps > 0 or captioning_weight > 0
    model = QFormerCrossEncoder(
        QFormerConfig(
            image_dim=image_tokens.shape[-1],
            vocab_size=len(vocab),
            layers=layers,
            dense_residual=dense_residual,
            dense_scale_init=_logit_scale(encoder),
            captioning=captioning,
            image_tokens=image_tokens.shape[1],
        )
    )
    losses = train_qformer(
        model,
        vocab,
        image_tokens,
        texts,
        positives,
        negatives,
        steps=steps,
        seed=seed,
        n_hard=(7 if dense_residual else None) if n_hard is None else n_hard,
        batch_size=batch_size,
        lr=lr,
        dense=dense_emb,
        progress=progress,
        captioning_steps=captioning_steps,
        captioning_weight=captioning_weight,
    )
    t2 = time.perf_counter()
    calibration: dict[float, float] = {}
    if captioning and val_corpus is not None:
        val = mine_training_data(
            encoder,
            val_corpus,
            tokens_fn,
            k_mine=k_mine,
            positives_of=positives_of,
            dense_residual=dense_residual,
        )
        calibration = choose_lm_weight(model, vocab, val, lm_weights, seed=seed)
        # The best weight; ties go to the smaller one (less reliance on the captioner).
        best = max(calibration, key=lambda w: (calibration[w], -w))
        model.config = replace(model.config, lm_weight=best)
        logger.info("lm_weight %s (validation R@1 per weight: %s)", best, calibration)
    reranker = QFormerReranker(
        model,
        vocab,
        tokens_fn,
        corpus,
        dense=clip_pair_similarity(encoder, corpus) if dense_residual else None,
    )
    reranker.save(out)
    record = {
        "command": command,
        "train_images": len(items),
        "train_captions": len(texts),
        "mined_true_matches_moved_to_positives": n_extra,
        "mine_seconds": t1 - t0,
        "train_seconds": t2 - t1,
        "first_loss": float(np.mean(losses[:20])),
        "final_loss": float(np.mean(losses[-50:])),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        "config": asdict(model.config),
        "validation_r1_by_lm_weight": {str(k): v for k, v in calibration.items()},
        "calibration_seconds": time.perf_counter() - t2,
    }
    atomic_write_json(Path(out) / "train_record.json", {**record, "losses": losses})
    return record


def train_shapes_qformer(
    out: str | os.PathLike[str] = "runs/qformer",
    *,
    steps: int = 1000,
    n_train: int = 4000,
    seed: int = 0,
    k_mine: int = 16,
    n_hard: int | None = None,
    batch_size: int = 32,
    lr: float = 2e-3,
    dense_residual: bool = True,
    progress: bool = True,
    layers: int = 2,
    n_val: int = 500,
    captioning_steps: int = 0,
    captioning_weight: float = 0.0,
) -> dict[str, Any]:
    """Train the Q-Former reranker on the shapes world with negatives mined by shapes-clip.

    Mined candidates that the caption also describes (see
    :func:`~vistrieve.data.shapes.caption_signature`) count as positives, not negatives.
    A captioning model's ``lm_weight`` is chosen on the val split. The shipped model:
    ``python -m vistrieve.rerankers.qformer --out runs/qformer-itg --captioning-steps 3000
    --steps 5000 --captioning-weight 1.0``.
    """
    from vistrieve.data.shapes import Scene, ShapesWorld, caption_signature
    from vistrieve.encoders import create_encoder

    world = ShapesWorld(seed=seed, n_train=n_train, n_val=n_val)
    corpus = world.corpus("train")
    # Only a captioning model has an lm_weight to choose on the val split.
    val = world.corpus("val") if captioning_steps > 0 or captioning_weight > 0 else None
    encoder = create_encoder("shapes-clip", progress=False)
    corpora = [corpus] if val is None else [corpus, val]
    scenes = {i: Scene.from_dict(it.metadata["scene"]) for c in corpora for i, it in c.items()}

    def positives_of(caption: str, owner: str, mined: list[str]) -> set[str]:
        sig = caption_signature(scenes[owner], caption)
        return {i for i in mined if caption_signature(scenes[i], caption) == sig}

    command = (
        f"python -m vistrieve.rerankers.qformer --out {out} --steps {steps} --seed {seed} "
        f"--lr {lr} --batch-size {batch_size} --n-train {n_train} --n-val {n_val} "
        f"--layers {layers} "
        f"--captioning-steps {captioning_steps} --captioning-weight {captioning_weight}"
        + ("" if dense_residual else " --no-dense-residual")
    )
    return train_qformer_reranker(
        encoder,
        corpus,
        clip_patch_tokens(encoder),
        encoder.tokenizer,  # type: ignore[attr-defined]
        out,
        steps=steps,
        k_mine=k_mine,
        n_hard=n_hard,
        batch_size=batch_size,
        lr=lr,
        dense_residual=dense_residual,
        positives_of=positives_of,
        seed=seed,
        progress=progress,
        command=command,
        layers=layers,
        captioning_steps=captioning_steps,
        captioning_weight=captioning_weight,
        val_corpus=val,
    )


def load_qformer_reranker(
    directory: str | os.PathLike[str],
    corpus: Mapping[str, Item],
    *,
    adapter: str | os.PathLike[str] | None = None,
    **kw: Any,
) -> QFormerReranker:
    """A saved shapes Q-Former reranker, with the embedded shapes-clip image tower (and its
    cosine as the dense anchor of a ``dense_residual`` model).

    Args:
        directory: A directory written by :meth:`QFormerReranker.save`, or :data:`EMBEDDED`
            (``"embedded"``) for the copy that ships in the package.
        corpus: Items by id (candidate images come from here).
        adapter: Output of ``vistrieve finetune reranker`` (a LoRA adapter, merged on
            load, or full weights).
        **kw: :class:`QFormerReranker` options (``name``, ``batch_size``).
    """
    from vistrieve.encoders import create_encoder

    model, token_ids, name = QFormerReranker.load_model(directory)
    if adapter is not None:
        from vistrieve.adapters import adapter_digest, load_finetuned

        model = load_finetuned(model, adapter, stage="reranker")  # type: ignore[assignment]
        name = f"{name}+finetuned:{adapter_digest(adapter)}"
    encoder = create_encoder("shapes-clip", progress=False)
    vocab = TextVocabulary(encoder.tokenizer, token_ids)  # type: ignore[attr-defined]
    if model.config.dense_residual:
        kw.setdefault("dense", clip_pair_similarity(encoder, corpus))
    return QFormerReranker(
        model, vocab, clip_patch_tokens(encoder), corpus, name=kw.pop("name", name), **kw
    )


if __name__ == "__main__":
    import argparse
    import json
    import sys

    p = argparse.ArgumentParser(description="Train the shapes-world Q-Former reranker.")
    p.add_argument("--out", default="runs/qformer")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument(
        "--n-val", type=int, default=500, help="val base images (choose lm_weight on them)"
    )
    p.add_argument("--no-dense-residual", action="store_true")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument(
        "--captioning-steps",
        type=int,
        default=0,
        help="steps of the captioning loss alone before listwise ITM training",
    )
    p.add_argument(
        "--captioning-weight",
        type=float,
        default=0.0,
        help="weight of the captioning loss during ITM training",
    )
    p.add_argument(
        "--install-from",
        metavar="DIR",
        help="copy a trained Q-Former (DIR) into the package instead of training",
    )
    a = p.parse_args()
    if a.install_from:
        sys.stdout.write(f"installed {install_embedded_qformer(a.install_from)}\n")
        raise SystemExit(0)
    result = train_shapes_qformer(
        a.out,
        steps=a.steps,
        seed=a.seed,
        lr=a.lr,
        batch_size=a.batch_size,
        n_train=a.n_train,
        dense_residual=not a.no_dense_residual,
        layers=a.layers,
        n_val=a.n_val,
        captioning_steps=a.captioning_steps,
        captioning_weight=a.captioning_weight,
    )
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
