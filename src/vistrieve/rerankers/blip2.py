"""BLIP-2 reranking with the image-text matching (ITM) and contrastive (ITC) heads.

LAVIS does not rank by ITM alone: inside the first stage's top ``k_test = 128`` it scores
each (text, image) pair with the ITM head's class-1 logit averaged over the 32 query
tokens, plus the ITC similarity taken as the maximum over the query tokens of the
query-token / text-[CLS] cosine; everything outside the top-k keeps -100. This module
reproduces that score on transformers' ``Blip2ForImageTextRetrieval`` (which needs no
LAVIS pin) and offers the three modes ``"itm"``, ``"itc"`` and ``"itm+itc"``. The depth k
is the pipeline's :class:`~vistrieve.pipeline.RerankStage` ``k`` (128 by default, as LAVIS).

Every candidate image is encoded once per call (vision tower, then the Q-Former queries for
ITC); the text-conditioned ITM pass runs over all (query, candidate) pairs in batches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from vistrieve.rerankers.base import PairwiseReranker
from vistrieve.types import Item
from vistrieve.utils.images import load_image

logger = logging.getLogger(__name__)

Mode = Literal["itm", "itc", "itm+itc"]


class Blip2ItmReranker(PairwiseReranker):
    """Re-score candidates with BLIP-2's ITM head, ITC similarity, or their sum (LAVIS).

    Args:
        model: A ``Blip2ForImageTextRetrieval``.
        tokenizer: Its tokenizer.
        image_processor: Its image processor.
        corpus: Items by id; candidates' images are read from here.
        mode: ``"itm"``, ``"itc"`` or ``"itm+itc"`` (the LAVIS score).
        batch_size: (query, image) pairs per ITM forward pass.
        name: Stage name in ``Hit.scores``; the components are also recorded as
            ``{name}.itm`` and ``{name}.itc``.
        device: Torch device.

    Queries are scored by their text (``Query.as_text()``: the caption plus rounds for a
    dialog, the modification for a composed query); an image-only query is an error.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        image_processor: Any,
        corpus: Mapping[str, Item],
        *,
        mode: Mode = "itm+itc",
        batch_size: int = 32,
        max_length: int = 64,
        name: str = "blip2",
        device: str | torch.device = "cpu",
    ) -> None:
        if mode not in ("itm", "itc", "itm+itc"):
            raise ValueError(f"mode must be 'itm', 'itc' or 'itm+itc', got {mode!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.model: Any = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.corpus = corpus
        self.mode = mode
        self.batch_size = batch_size
        self.max_length = max_length
        self.name = name
        # The LAVIS score is a sum; its two terms are kept beside it for auditing.
        self.record_components = mode == "itm+itc"
        self.pairs_evaluated = 0
        self.images_encoded = 0

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike[str], corpus: Mapping[str, Item], **kwargs: Any
    ) -> Blip2ItmReranker:
        """Load ``Blip2ForImageTextRetrieval`` and its processor by hub name or local path."""
        from transformers import AutoProcessor, Blip2ForImageTextRetrieval

        path = os.fspath(name_or_path)
        model = Blip2ForImageTextRetrieval.from_pretrained(path)
        processor = AutoProcessor.from_pretrained(path)
        return cls(model, processor.tokenizer, processor.image_processor, corpus, **kwargs)

    def cost(self) -> dict[str, float]:
        """Cumulative pairs scored and candidate images encoded."""
        return {
            "pairs_evaluated": float(self.pairs_evaluated),
            "images_encoded": float(self.images_encoded),
        }

    # -- encoding ------------------------------------------------------------------------
    def _image_embeds(self, ids: Sequence[str]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for s in range(0, len(ids), self.batch_size):
            chunk = ids[s : s + self.batch_size]
            images = []
            for i in chunk:
                if i not in self.corpus:
                    raise KeyError(f"candidate {i!r} is not in the reranker's corpus")
                item = self.corpus[i]
                if item.image is None:
                    raise ValueError(f"candidate {i!r} has no image to rerank with")
                images.append(load_image(item.image))
            pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
            dtype = next(self.model.parameters()).dtype
            emb = self.model.vision_model(pixel_values=pixels.to(self.device, dtype))[0]
            out.update(zip(chunk, emb, strict=True))
            self.images_encoded += len(chunk)
        return out

    def _tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask")}

    def _itc(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Pairwise ITC for aligned rows: max over query tokens of the cosine."""
        m = self.model
        queries = m.query_tokens.expand(image_embeds.shape[0], -1, -1)
        img_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        q_out = m.qformer(
            query_embeds=queries,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=img_mask,
            return_dict=True,
        ).last_hidden_state
        img_feat = F.normalize(m.vision_projection(q_out), dim=-1)  # (B, Q, D)
        t_out = m.qformer(
            query_embeds=m.embeddings(input_ids=input_ids),
            query_length=0,
            attention_mask=attention_mask,
            return_dict=True,
        ).last_hidden_state
        txt_feat = F.normalize(m.text_projection(t_out[:, 0, :]), dim=-1)  # (B, D)
        return torch.einsum("bqd,bd->bq", img_feat, txt_feat).max(dim=1).values

    def _itm(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Pairwise ITM class-1 logit averaged over the query tokens (aligned rows)."""
        m = self.model
        queries = m.query_tokens.expand(image_embeds.shape[0], -1, -1)
        q_mask = torch.ones(queries.shape[:-1], dtype=torch.long, device=self.device)
        img_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        out = m.qformer(
            query_embeds=m.embeddings(input_ids=input_ids, query_embeds=queries),
            query_length=queries.shape[1],
            attention_mask=torch.cat([q_mask, attention_mask], dim=1),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=img_mask,
            return_dict=True,
        ).last_hidden_state
        logits = m.itm_head(out[:, : queries.shape[1], :]).mean(dim=1)
        return logits[:, 1]

    def score_pairs(
        self, texts: Sequence[str], image_ids: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Scores of aligned (text, image id) pairs: ``{"itm", "itc", "score"}`` tensors."""
        if len(texts) != len(image_ids):
            raise ValueError(f"{len(texts)} texts but {len(image_ids)} image ids")
        uniq = list(dict.fromkeys(image_ids))
        itm_all, itc_all = [], []
        with torch.inference_mode():
            embeds = self._image_embeds(uniq)
            for s in range(0, len(texts), self.batch_size):
                t = list(texts[s : s + self.batch_size])
                img = torch.stack([embeds[i] for i in image_ids[s : s + self.batch_size]])
                tok = self._tokens(t)
                if self.mode != "itc":
                    itm_all.append(self._itm(img, tok["input_ids"], tok["attention_mask"]).float())
                if self.mode != "itm":
                    itc_all.append(self._itc(img, tok["input_ids"], tok["attention_mask"]).float())
        self.pairs_evaluated += len(texts)
        zeros = torch.zeros(len(texts))
        itm = torch.cat(itm_all).cpu() if itm_all else zeros
        itc = torch.cat(itc_all).cpu() if itc_all else zeros
        return {"itm": itm, "itc": itc, "score": itm + itc}
