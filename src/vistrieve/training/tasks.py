"""The five fine-tuning stages as :class:`~vistrieve.training.finetune.FinetuneTask` values,
and the data builders that feed them.

=========  ====================================================================  ==========
stage      model and data                                                        metric
=========  ====================================================================  ==========
clip       open_clip dual encoder on image-caption pairs (optional hard          val T->I R@1
           negative captions, NegCLIP style); or the LiT baseline's text tower
           + heads on cached image features
hash       a trained CMSEH hash model on feature pairs with its hashing loss     val mAP
reranker   the Q-Former cross-encoder on (caption, positive, mined negatives)    val rerank R@1
rewriter   a causal chat LM on (caption + instruction -> edited description)     val CIR R@1
grace      a GRACE model's LM on (query -> identifier) pairs                     val R@1
=========  ====================================================================  ==========
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vistrieve.encoders.lit import LitTextSide
from vistrieve.training.finetune import FinetuneTask
from vistrieve.types import Corpus

# ----------------------------------------------------------------------------------- clip


def _r_at_1_metrics(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    keep = ("text_to_image_R@1", "text_to_image_R@5", "text_to_image_R@10", "image_to_text_R@1")
    return {f"{prefix}{k}": float(metrics[k]) for k in keep if k in metrics}


def swap_attribute_negative(
    caption: str, rng: np.random.Generator, vocabulary: Sequence[str]
) -> str | None:
    """A hard negative of ``caption``: two of its ``vocabulary`` words swapped (a binding
    change: "a red circle and a blue square" -> "a blue circle and a red square"), or, with
    one such word, that word replaced by another from ``vocabulary``. None when the caption
    has no such word."""
    words = caption.split()
    spots = [i for i, w in enumerate(words) if w.strip(",.") in vocabulary]
    distinct = {words[i].strip(",.") for i in spots}
    if len(distinct) >= 2:
        while True:
            i, j = rng.choice(spots, size=2, replace=False)
            if words[i].strip(",.") != words[j].strip(",."):
                break
        wi, wj = words[i].strip(",."), words[j].strip(",.")
        words[i], words[j] = words[i].replace(wi, wj), words[j].replace(wj, wi)
        return " ".join(words)
    if not spots:
        return None
    i = int(rng.choice(spots))
    old = words[i].strip(",.")
    others = [v for v in vocabulary if v != old]
    words[i] = words[i].replace(old, others[int(rng.integers(len(others)))])
    return " ".join(words)


class ClipFinetuneTask(FinetuneTask):
    """Contrastive fine-tuning of an open_clip model (``encoder.model``).

    Each micro-batch holds ``batch_size`` distinct images with one of their captions; with
    ``negative_words`` each image also meets a hard-negative caption (its own caption with
    two of those words swapped), added to the image->text side of the InfoNCE loss.

    Args:
        encoder: An :class:`~vistrieve.encoders.open_clip.OpenClipEncoder`.
        train: Image-caption pairs to adapt on.
        val: Held-out pairs; the best step has the highest ``val_text_to_image_R@1``.
        test: Optional pairs reported beside the validation metrics (``test_*``).
        negative_words: Words whose swap makes a hard negative (e.g. colour names).
    """

    stage = "clip"
    metric = "val_text_to_image_R@1"

    def __init__(
        self,
        encoder: Any,
        train: Corpus,
        val: Corpus,
        *,
        test: Corpus | None = None,
        negative_words: Sequence[str] = (),
    ) -> None:
        from vistrieve.training.clip import preprocess_corpus

        items = [it for it in train.values() if it.captions and it.image is not None]
        if len(items) < 2:
            raise ValueError("the training corpus needs at least 2 items with image and captions")
        self.encoder = encoder
        self.model = encoder.model
        self.train, self.val, self.test = train, val, test
        self.captions = [list(it.captions) for it in items]
        self.pixels = preprocess_corpus(Corpus(items), encoder.preprocess)
        self.negative_words = tuple(negative_words)

    def batch(self, rng: np.random.Generator, batch_size: int) -> Any:
        idx = rng.choice(
            len(self.captions), size=min(batch_size, len(self.captions)), replace=False
        )
        texts = [self.captions[i][int(rng.integers(len(self.captions[i])))] for i in idx]
        negs: list[str] = []
        if self.negative_words:
            for t in texts:
                neg = swap_attribute_negative(t, rng, self.negative_words)
                if neg is not None and neg != t:
                    negs.append(neg)
        tok = self.encoder.tokenizer
        device = next(self.model.parameters()).device
        return (
            self.pixels[torch.from_numpy(idx)].to(device),
            tok(texts).to(device),
            tok(negs).to(device) if negs else None,
        )

    def loss(self, model: Any, batch: Any) -> torch.Tensor:
        from vistrieve.training.clip import clip_loss

        pixels, text, negs = batch
        img = F.normalize(model.encode_image(pixels), dim=-1)
        txt = F.normalize(model.encode_text(text), dim=-1)
        scale = model.logit_scale
        if negs is None:
            return clip_loss(img, txt, scale)
        neg = F.normalize(model.encode_text(negs), dim=-1)
        s = scale.exp().clamp(max=100)
        labels = torch.arange(len(img), device=img.device)
        i2t = s * img @ torch.cat([txt, neg]).t()
        t2i = s * txt @ img.t()
        return (F.cross_entropy(i2t, labels) + F.cross_entropy(t2i, labels)) / 2

    def evaluate(self, model: Any) -> dict[str, float]:
        from vistrieve.training.clip import evaluate_encoder

        # peft injects the adapters into encoder.model in place (and full fine-tuning
        # trains it directly), so the task's encoder already encodes with ``model``.
        out = _r_at_1_metrics(evaluate_encoder(self.encoder, self.val), "val_")
        if self.test is not None:
            out.update(_r_at_1_metrics(evaluate_encoder(self.encoder, self.test), "test_"))
        return out

    def base_spec(self) -> dict[str, Any]:
        return dict(getattr(self.encoder, "spec", {}) or {"name": self.encoder.name})

    def info(self) -> dict[str, Any]:
        return {
            "train_images": len(self.captions),
            "train_captions": sum(len(c) for c in self.captions),
            "val_images": len(self.val),
            "test_images": len(self.test) if self.test is not None else 0,
            "hard_negatives": bool(self.negative_words),
        }


class LitFinetuneTask(FinetuneTask):
    """LoRA on the LiT baseline's text tower (MiniLM ``query``/``value``) with its heads
    trained fully, on cached features of the frozen image tower.

    Args:
        encoder: A :class:`~vistrieve.encoders.lit.LitEncoder` with trained heads.
        train, val, test: ``(image_features, captions, caption_to_image)`` triples: frozen
            image-tower features, caption strings and the image row of each caption.
        keep_last: Keep the last step rather than the best on ``val`` (when ``val`` is not
            independent of the heads' training).
        fresh_heads: Start from newly initialised heads (seeded) instead of the encoder's.
        tune_tower: Whether full fine-tuning (``method="full"``) trains the text tower; with
            False it trains the heads alone: the LiT recipe, as a same-loop control.
    """

    stage = "clip"
    metric = "val_text_to_image_R@1"
    modules_to_save = ["heads"]
    default_targets = ["query", "value"]

    def __init__(
        self,
        encoder: Any,
        train: tuple[np.ndarray, list[str], np.ndarray],
        val: tuple[np.ndarray, list[str], np.ndarray],
        test: tuple[np.ndarray, list[str], np.ndarray] | None = None,
        *,
        keep_last: bool = False,
        fresh_heads: bool = False,
        tune_tower: bool = True,
        seed: int = 0,
    ) -> None:
        from vistrieve.encoders.lit import LitHeads

        self.encoder = encoder
        self.keep_last = keep_last
        self.tune_tower = tune_tower
        heads = encoder.heads
        if fresh_heads:
            torch.manual_seed(seed)
            cfg = heads.config
            heads = LitHeads(cfg["image_dim"], cfg["text_dim"], cfg["embed_dim"])
            encoder.heads = heads
        self.model = LitTextSide(encoder.text_tower, heads)
        self.train, self.val, self.test = train, val, test
        t2i = torch.from_numpy(train[2])
        self.by_image = [torch.nonzero(t2i == i).flatten().tolist() for i in range(len(train[0]))]

    def batch(self, rng: np.random.Generator, batch_size: int) -> Any:
        n = len(self.train[0])
        idx = rng.choice(n, size=min(batch_size, n), replace=False)
        caps = [
            self.train[1][self.by_image[i][int(rng.integers(len(self.by_image[i])))]] for i in idx
        ]
        return torch.from_numpy(self.train[0][idx]), caps

    def loss(self, model: Any, batch: Any) -> torch.Tensor:
        from vistrieve.training.clip import clip_loss

        feats, caps = batch
        side: Any = model
        heads = side.heads
        device = heads.logit_scale.device
        ie = F.normalize(heads.image(feats.to(device)), dim=-1)
        te = F.normalize(heads.text(side.tower(caps)), dim=-1)
        return clip_loss(ie, te, heads.logit_scale)

    def _metrics(
        self, model: Any, data: tuple[np.ndarray, list[str], np.ndarray], prefix: str
    ) -> dict[str, float]:
        from vistrieve.evals.metrics import image_text_retrieval_metrics

        heads = model.heads
        device = heads.logit_scale.device
        ie = F.normalize(heads.image(torch.from_numpy(data[0]).to(device)), dim=-1)
        te = torch.cat(
            [
                F.normalize(heads.text(model.tower(data[1][s : s + 256])), dim=-1)
                for s in range(0, len(data[1]), 256)
            ]
        )
        m = image_text_retrieval_metrics(
            ie.float().cpu().numpy(), te.float().cpu().numpy(), data[2]
        )
        return _r_at_1_metrics(m, prefix)

    def evaluate(self, model: Any) -> dict[str, float]:
        out = self._metrics(model, self.val, "val_")
        if self.test is not None:
            out.update(self._metrics(model, self.test, "test_"))
        return out

    def trainable(self, name: str) -> bool:
        return self.tune_tower or name.startswith("heads.")

    def base_spec(self) -> dict[str, Any]:
        return dict(getattr(self.encoder, "spec", {}) or {"name": self.encoder.name})

    def info(self) -> dict[str, Any]:
        return {
            "train_images": len(self.train[0]),
            "train_captions": len(self.train[1]),
            "val_images": len(self.val[0]),
            "test_images": len(self.test[0]) if self.test is not None else 0,
        }


# ------------------------------------------------------------------------------- rewriter
@dataclass(frozen=True)
class RewritePair:
    """One rewriter training example: the reference caption, the instruction, and the
    description of the edited image."""

    caption: str
    instruction: str
    edited: str


def read_rewrite_pairs(path: str | os.PathLike[str]) -> list[RewritePair]:
    """Rewriter pairs from a JSONL manifest: one object per line with ``caption``,
    ``instruction`` and ``edited`` strings.

    Raises:
        ValueError: a line is not JSON or lacks one of the fields (line number named).
    """
    from vistrieve.utils.io import iter_jsonl

    pairs = []
    for n, row in iter_jsonl(path):
        missing = [
            k
            for k in ("caption", "instruction", "edited")
            if not isinstance(row.get(k), str) or not row[k].strip()
        ]
        if missing:
            raise ValueError(f"{path}:{n}: missing or empty field(s) {missing}")
        pairs.append(RewritePair(row["caption"], row["instruction"], row["edited"]))
    if not pairs:
        raise ValueError(f"{path} holds no rewrite pairs")
    return pairs


class RewriterFinetuneTask(FinetuneTask):
    """Supervised fine-tuning of a causal chat LM on a rewriting prompt (CIReVL by default;
    ``DIALOG_SUMMARY`` for dialog summaries): the loss covers the answer tokens
    (``"<answer_field>: ..."``) only.

    Args:
        model, tokenizer: The chat LM (SmolLM2 by default) and its tokenizer.
        pairs: Training pairs.
        evaluate_fn: ``llm -> metrics`` (an :class:`~vistrieve.llm.HFChatLLM`
            over the model being trained); must return :attr:`metric`. Default: the mean
            token accuracy of the answers of ``val_pairs`` (teacher forced).
        val_pairs: Pairs for the default evaluation.
        name: The base model's name (recorded with the adapter).
        prompt: The prompt template; a pair's ``caption`` and ``instruction`` fill its two
            fields (``field_names``), its ``edited`` text follows ``answer_field``.
    """

    stage = "rewriter"
    lora_task_type = "CAUSAL_LM"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        pairs: Sequence[RewritePair],
        *,
        evaluate_fn: Callable[[Any], dict[str, float]] | None = None,
        val_pairs: Sequence[RewritePair] = (),
        metric: str = "val_token_accuracy",
        name: str = "",
        max_length: int = 256,
        prompt: Any = None,
        answer_field: str = "Edited Description",
        field_names: tuple[str, str] = ("caption", "modification"),
    ) -> None:
        from vistrieve.llm.prompts import CIREVL

        if not pairs:
            raise ValueError("no rewriter training pairs")
        if evaluate_fn is None and not val_pairs:
            raise ValueError("give evaluate_fn or val_pairs to evaluate the rewriter")
        self.model = model
        self.tokenizer = tokenizer
        self.pairs = list(pairs)
        self.val_pairs = list(val_pairs)
        self.evaluate_fn = evaluate_fn
        self.metric = metric
        self.name = name
        self.max_length = max_length
        self.prompt = prompt or CIREVL
        self.answer_field = answer_field
        self.field_names = field_names
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def encode(
        self, pairs: Sequence[RewritePair]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, labels) with labels only on the answer tokens."""
        tok = self.tokenizer
        rows, labels = [], []
        a_name, b_name = self.field_names
        for p in pairs:
            msgs = self.prompt.messages(**{a_name: p.caption, b_name: p.instruction})
            if getattr(tok, "chat_template", None):
                prompt = str(
                    tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
                )
            else:
                prompt = "\n".join(f"{m['role']}: {m['content']}" for m in msgs) + "\nassistant:"
            answer = f"{self.answer_field}: {p.edited}"
            a = tok(prompt, add_special_tokens=False)["input_ids"]
            b = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids = (a + b)[-self.max_length :]
            lab = ([-100] * len(a) + b)[-self.max_length :]
            rows.append(ids)
            labels.append(lab)
        n = max(len(r) for r in rows)
        pad = tok.pad_token_id
        input_ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
        lab_t = torch.tensor([r + [-100] * (n - len(r)) for r in labels])
        return input_ids, mask, lab_t

    def batch(self, rng: np.random.Generator, batch_size: int) -> Any:
        idx = rng.choice(len(self.pairs), size=min(batch_size, len(self.pairs)), replace=False)
        return self.encode([self.pairs[i] for i in idx])

    def loss(self, model: Any, batch: Any) -> torch.Tensor:
        device = next(p for p in model.parameters()).device
        ids, mask, labels = (t.to(device) for t in batch)
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss

    def token_accuracy(self, model: Any, pairs: Sequence[RewritePair]) -> float:
        """Share of answer tokens the model predicts exactly (teacher forced)."""
        device = next(p for p in model.parameters()).device
        right = total = 0
        for s in range(0, len(pairs), 16):
            ids, mask, labels = (t.to(device) for t in self.encode(pairs[s : s + 16]))
            logits = model(input_ids=ids, attention_mask=mask).logits
            pred, gold = logits[:, :-1].argmax(-1), labels[:, 1:]
            keep = gold != -100
            right += int((pred[keep] == gold[keep]).sum())
            total += int(keep.sum())
        return right / max(total, 1)

    def evaluate(self, model: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.val_pairs:
            out["val_token_accuracy"] = self.token_accuracy(model, self.val_pairs)
        if self.evaluate_fn is not None:
            from vistrieve.llm import HFChatLLM

            llm = HFChatLLM(model, self.tokenizer, name=self.name or "rewriter", max_new_tokens=40)
            out.update(self.evaluate_fn(llm))
        return out

    def base_spec(self) -> dict[str, Any]:
        return {"name": self.name}

    def info(self) -> dict[str, Any]:
        return {"train_pairs": len(self.pairs), "val_pairs": len(self.val_pairs)}


# ------------------------------------------------------------------------------- reranker
class RerankerFinetuneTask(FinetuneTask):
    """Listwise fine-tuning of a Q-Former cross-encoder reranker on (caption, positive,
    hard negatives) mined by the first stage over the training corpus.

    Args:
        reranker: A :class:`~vistrieve.rerankers.qformer.QFormerReranker` (its model is
            adapted; its vocabulary, image tower and dense anchor are reused).
        encoder: The first stage that mines negatives (and whose cosine is the dense anchor).
        train: Training items.
        val: Validation items; the metric is R@1 after reranking the first stage's top
            ``k`` for the first caption of each image.
        positives_of: Extra positives among mined candidates (see
            :func:`~vistrieve.rerankers.qformer.mine_training_data`).
        n_neg, n_hard: Candidates per caption besides its positive, and how many of them are
            mined hard negatives.
        k: First-stage depth at validation (and mining).
        base: How the base reranker was loaded (recorded with the adapter).
    """

    stage = "reranker"
    metric = "val_rerank_R@1"

    def __init__(
        self,
        reranker: Any,
        encoder: Any,
        train: Corpus,
        val: Corpus,
        *,
        positives_of: Callable[[str, str, list[str]], set[str]] | None = None,
        n_neg: int = 7,
        n_hard: int = 7,
        k: int = 16,
        base: str = "",
    ) -> None:
        from vistrieve.training.qformer import mine_training_data

        self.reranker = reranker
        self.model: Any = reranker.model
        self.encoder = encoder
        residual = bool(self.model.config.dense_residual)
        self.mined = mine_training_data(
            encoder,
            train,
            reranker.image_tokens,
            k_mine=k,
            positives_of=positives_of,
            dense_residual=residual,
        )
        self.text_ids = reranker.vocabulary.encode(self.mined.texts, self.model.config.max_text_len)
        self.n_neg, self.n_hard, self.k = n_neg, min(n_hard, n_neg), k
        self.val = val
        self.base = base
        self._val_hits: list[Any] | None = None
        self._first_stage: dict[str, float] = {}

    def batch(self, rng: np.random.Generator, batch_size: int) -> Any:
        from vistrieve.training.qformer import sample_listwise

        m = self.mined
        return sample_listwise(
            rng, m.positives, m.negatives, len(m.items), batch_size, self.n_neg, self.n_hard
        )

    def loss(self, model: Any, batch: Any) -> torch.Tensor:
        from vistrieve.training.qformer import listwise_loss

        rows, idx = batch
        return listwise_loss(
            model, self.mined.image_tokens, self.text_ids, rows, idx, self.mined.dense
        )

    def evaluate(self, model: Any) -> dict[str, float]:
        from vistrieve.rerankers.qformer import QFormerReranker
        from vistrieve.retrievers.dense import DenseRetriever
        from vistrieve.types import Query

        items = [it for it in self.val.values() if it.captions]
        queries = [Query(text=it.captions[0]) for it in items]
        if self._val_hits is None:
            # The first stage does not change during training: retrieve and score it once.
            dense = DenseRetriever.build(self.encoder, self.val, index_captions=False)
            self._val_hits = dense.retrieve(queries, k=self.k)
            hits = self._val_hits
            self._first_stage = {
                "val_first_stage_R@1": float(
                    np.mean(
                        [bool(h) and h[0].id == it.id for h, it in zip(hits, items, strict=True)]
                    )
                ),
                f"val_first_stage_R@{self.k}": float(
                    np.mean(
                        [any(x.id == it.id for x in h) for h, it in zip(hits, items, strict=True)]
                    )
                ),
            }
        r = self.reranker
        scorer = QFormerReranker(
            model,
            r.vocabulary,
            r.image_tokens,
            self.val,
            name=r.name,
            dense=r.dense,
        )
        scorer._cache = r._cache  # the frozen image tower's tokens do not change
        reranked = scorer.rerank(queries, self._val_hits)
        top = np.mean([bool(h) and h[0].id == it.id for h, it in zip(reranked, items, strict=True)])
        return {"val_rerank_R@1": float(top), **self._first_stage}

    def base_spec(self) -> dict[str, Any]:
        return {"reranker": self.base}

    def info(self) -> dict[str, Any]:
        return {
            "train_images": len(self.mined.items),
            "train_captions": len(self.mined.texts),
            "val_images": len(self.val),
            "k": self.k,
        }


# ----------------------------------------------------------------------------------- hash
class HashFinetuneTask(FinetuneTask):
    """Fine-tuning of a trained CMSEH hash model on new feature pairs with its loss.

    Parameters of the loss itself (the proxy loss's class proxies) stay at their seeded
    initialisation: fixed class anchors for the adapted codes.

    Args:
        model: A trained :class:`~vistrieve.hashing.heads.CMSEH`.
        loss_fn: A :class:`~vistrieve.hashing.losses.CMSEHLoss` for the model's bits.
        data: :class:`~vistrieve.training.hashing.HashData` (training pairs plus a labelled
            benchmark, scored by mAP@ALL, or held-out pairs, scored by R@1).
        base: Where the model came from (recorded with the adapter).
    """

    stage = "hash"

    def __init__(self, model: nn.Module, loss_fn: nn.Module, data: Any, *, base: str = "") -> None:
        from vistrieve.adapters import linear_layers

        if data.benchmark is None and data.pairs is None:
            raise ValueError("hash fine-tuning needs a benchmark or held-out pairs to evaluate")
        self.model = model
        self.loss_fn = loss_fn.requires_grad_(False)
        self.data = data
        self.base = base
        self.default_targets = sorted(linear_layers(model))
        self.image = torch.as_tensor(np.asarray(data.train_image), dtype=torch.float32)
        self.text = torch.as_tensor(np.asarray(data.train_text), dtype=torch.float32)
        labels = data.train_labels
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels))
        self.metric = (
            "val_hash_text_to_image_mAP@ALL"
            if data.benchmark is not None
            else "val_hash_text_to_image_R@1"
        )

    def batch(self, rng: np.random.Generator, batch_size: int) -> Any:
        idx = torch.from_numpy(
            rng.choice(len(self.image), size=min(batch_size, len(self.image)), replace=False)
        )
        y = self.labels[idx] if self.labels is not None else None
        return self.image[idx], self.text[idx], y

    def loss(self, model: Any, batch: Any) -> torch.Tensor:
        x_img, x_txt, y = batch
        device = next(p for p in model.parameters()).device
        self.loss_fn.to(device)
        out = model(x_img.to(device), x_txt.to(device))
        terms = self.loss_fn(out, y.to(device) if y is not None else None)
        return terms["total"]

    def evaluate(self, model: Any) -> dict[str, float]:
        from vistrieve.training.hashing import evaluate_map, evaluate_pairs

        if self.data.benchmark is not None:
            m = evaluate_map(model, self.data.benchmark, top_ks=(None,))
            keep = {k: v for k, v in m.items() if k.startswith("hash_")}
        else:
            m = evaluate_pairs(model, self.data.pairs)
            keep = {k: v for k, v in m.items() if k.startswith("hash_") and "R@" in k}
        return {f"val_{k}": float(v) for k, v in keep.items()}

    def base_spec(self) -> dict[str, Any]:
        return {"model": self.base}

    def info(self) -> dict[str, Any]:
        return {"train_pairs": len(self.image), "data": self.data.name}


# ---------------------------------------------------------------------------------- grace
class GraceFinetuneTask(FinetuneTask):
    """Fine-tuning of a GRACE model's language model on (query, image id) pairs: the
    identifiers stay as they are; the model learns to decode them from new query text.

    Args:
        retriever: A :class:`~vistrieve.generative.retriever.GraceRetriever`.
        pairs: Training ``(query text, image id)`` pairs (ids must have identifiers).
        val: Validation ``(query text, image id)`` pairs (R@1 and R@beams).
        base: Where the retriever was loaded from (recorded with the adapter).
    """

    stage = "grace"
    metric = "val_R@1"

    def __init__(
        self,
        retriever: Any,
        pairs: Sequence[tuple[str, str]],
        val: Sequence[tuple[str, str]],
        *,
        base: str = "",
    ) -> None:
        known = set(retriever.identifiers.by_item)
        unknown = [i for _, i in [*pairs, *val] if i not in known]
        if unknown:
            raise ValueError(
                f"{len(unknown)} pairs name images without an identifier (first {unknown[0]!r})"
            )
        if not pairs or not val:
            raise ValueError("GRACE fine-tuning needs training and validation pairs")
        self.retriever = retriever
        self.grace = retriever.model
        self.model = self.grace.lm
        self.lora_task_type = "SEQ_2_SEQ_LM" if self.grace.seq2seq else "CAUSAL_LM"
        self.pairs, self.val = list(pairs), list(val)
        self.targets = self.grace.identifier_tokens(retriever.identifiers)
        self.base = base

    def batch(self, rng: np.random.Generator, batch_size: int) -> Any:
        idx = rng.choice(len(self.pairs), size=min(batch_size, len(self.pairs)), replace=False)
        return [self.pairs[i] for i in idx]

    def loss(self, model: Any, batch: Any) -> torch.Tensor:
        # peft adapts the LM in place, so the GRACE wrapper already runs through the adapters.
        emb, mask = self.grace.text_source([q for q, _ in batch])
        return self.grace.loss(emb, mask, [self.targets[i] for _, i in batch])

    def evaluate(self, model: Any) -> dict[str, float]:
        from vistrieve.types import Query

        hits = self.retriever.retrieve(
            [Query(text=q) for q, _ in self.val], k=self.retriever.num_beams
        )
        r1 = np.mean([bool(h) and h[0].id == i for h, (_, i) in zip(hits, self.val, strict=True)])
        rk = np.mean([any(x.id == i for x in h) for h, (_, i) in zip(hits, self.val, strict=True)])
        return {"val_R@1": float(r1), f"val_R@{self.retriever.num_beams}": float(rk)}

    def base_spec(self) -> dict[str, Any]:
        return {"retriever": self.base}

    def info(self) -> dict[str, Any]:
        return {"train_pairs": len(self.pairs), "val_pairs": len(self.val)}
