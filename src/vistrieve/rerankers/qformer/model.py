"""The Q-Former cross-encoder: BLIP-2's query-token pattern at CPU scale.

Learnable query tokens and the text tokens share self-attention layers, and the queries
cross-attend to the frozen image encoder's patch tokens; an ITM head on the mean of the
query outputs gives one matching logit per (text, image) pair. Because every text token can
attend to the queries that looked at the image, the model can check that *this* colour
goes with *that* shape, which a dual encoder's single pooled vector cannot.

With ``dense_residual=True`` the model's logit is
``cross(text, image) + s * cos(dual-encoder text, dual-encoder image)`` with a learnable
scale ``s`` and a zero-initialised ITM head: a fresh model ranks exactly as the dual encoder
does, and training spends its capacity on the pairs the dual encoder gets wrong.

``captioning`` adds BLIP-2's image-grounded text generation (ITG) head, which scores a pair
by ``log p(text | image)`` as well.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


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
