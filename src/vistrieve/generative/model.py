"""The GRACE model: a transformers language model that generates image identifiers.

The source of a generation is either query text (the "retrieve" task) or an image, which
enters as its image-encoder feature vector projected into ``n_prefix`` embeddings of the
LM's input space (the "memorise" task). The target is the identifier's tokens followed by
EOS. Any transformers encoder-decoder (T5, BART) or decoder-only (GPT-2, Llama) LM works:

* encoder-decoder: the source embeddings are the encoder input; the decoder generates;
* decoder-only: the source embeddings, left-padded, are followed by a learnt separator
  embedding, after which the identifier is generated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vistrieve.generative.identifiers import IdentifierError, Identifiers
from vistrieve.generative.trie import Trie
from vistrieve.utils.io import atomic_directory, read_json

MODEL_CONFIG = "grace_config.json"
HEAD_FILE = "grace_head.safetensors"
IDENTIFIERS_FILE = "identifiers.json"


def word_tokenizer(words: Sequence[str], *, max_length: int = 64) -> Any:
    """A word-level fast tokenizer over ``words`` plus digits and letters, for small models.

    Digits are split individually (so numeric identifiers are one token per digit); letters
    are single-character words (space them out in identifiers). Special tokens: ``<pad>``
    (id 0), ``<eos>`` (1), ``<unk>`` (2).
    """
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab: dict[str, int] = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for w in [*words, *"0123456789", *"abcdefghijklmnopqrstuvwxyz"]:
        vocab.setdefault(w.lower(), len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    from tokenizers import normalizers

    tk.normalizer = normalizers.Lowercase()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


class GraceModel(nn.Module):
    """An LM plus an image-feature projection, trained to emit identifiers.

    Args:
        lm: A transformers ``PreTrainedModel`` (encoder-decoder or causal LM).
        tokenizer: Its tokenizer; needs an EOS token (a missing pad token is set to EOS).
        image_dim: Dimension of the image features that enter as prefix embeddings.
        n_prefix: How many embeddings one image becomes.
        max_source_length: Query texts are truncated to this many tokens.
    """

    def __init__(
        self,
        lm: Any,
        tokenizer: Any,
        image_dim: int,
        *,
        n_prefix: int = 4,
        max_source_length: int = 48,
    ) -> None:
        super().__init__()
        if tokenizer.eos_token_id is None:
            raise IdentifierError("the tokenizer has no EOS token; identifiers need one to end")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.lm = lm
        self.tokenizer = tokenizer
        self.image_dim = int(image_dim)
        self.n_prefix = int(n_prefix)
        self.max_source_length = int(max_source_length)
        self.seq2seq = bool(getattr(lm.config, "is_encoder_decoder", False))
        hidden = lm.get_input_embeddings().embedding_dim
        self.hidden = hidden
        self.image_proj = nn.Sequential(
            nn.LayerNorm(self.image_dim), nn.Linear(self.image_dim, hidden * self.n_prefix)
        )
        # Decoder-only models need a marker between the source and the identifier.
        self.sep = nn.Parameter(torch.randn(hidden) * 0.02)

    def apply_lora(
        self,
        *,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.0,
        target_modules: Sequence[str] | None = None,
    ) -> int:
        """Wrap the LM with peft LoRA adapters (the image projection stays fully trainable).

        ``target_modules=None`` uses :data:`vistrieve.adapters.FAMILY_TARGETS` for the
        model family (T5: ``q``, ``v``; GPT-2: ``c_attn``; Llama-style: attention
        projections). Returns the number of trainable parameters. Saving writes the adapter
        in peft's format (``adapter/``) and the merged LM (``lm/``).

        Raises:
            ValueError: no module matches ``target_modules`` (the message lists the layers
                there are), or ``r`` exceeds a targeted layer's smaller dimension.
        """
        from vistrieve.adapters import apply_lora

        self.lm = apply_lora(
            self.lm,
            r=r,
            alpha=alpha,
            dropout=dropout,
            target_modules=target_modules,
            task_type="SEQ_2_SEQ_LM" if self.seq2seq else "CAUSAL_LM",
        )
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def is_lora(self) -> bool:
        """Whether the LM carries peft adapters."""
        return hasattr(self.lm, "peft_config")

    @property
    def eos(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ identifiers
    def _missing_tokens(self, identifiers: Identifiers) -> list[str]:
        vocab = self.tokenizer.get_vocab()
        return [t for t in identifiers.new_tokens if t not in vocab]

    def add_identifier_tokens(self, identifiers: Identifiers) -> int:
        """Add an ``atomic`` scheme's new tokens to the tokenizer and the embedding matrix.

        Returns how many tokens were added (0 when they are all present already).
        """
        missing = self._missing_tokens(identifiers)
        if not missing:
            return 0
        self.tokenizer.add_tokens(missing, special_tokens=False)
        # Mean resizing gives every new row nearly the same vector, and a tied output layer
        # then cannot tell the new identifiers apart for many steps; independent random
        # rows train at once.
        self.lm.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        return len(missing)

    def identifier_tokens(self, identifiers: Identifiers) -> dict[str, list[int]]:
        """Token ids (ending with EOS) of every identifier, checked to fit the tokenizer.

        Raises:
            IdentifierError: an identifier tokenizes to nothing or to an unknown token, two
                identifiers tokenize alike, or an atomic scheme's tokens were not added.
        """
        missing = self._missing_tokens(identifiers)
        if missing:
            raise IdentifierError(
                f"{len(missing)} atomic identifier tokens (e.g. {missing[0]!r}) are not in the "
                "tokenizer; call add_identifier_tokens(identifiers) first"
            )
        unk = self.tokenizer.unk_token_id
        out: dict[str, list[int]] = {}
        seen: dict[tuple[int, ...], str] = {}
        texts = list(identifiers.by_item.values())
        enc = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        for item, text, ids in zip(identifiers.by_item, texts, enc, strict=True):
            ids = [int(t) for t in ids if int(t) != self.eos]
            if not ids or (unk is not None and unk in ids):
                raise IdentifierError(
                    f"identifier {text!r} of {item!r} does not fit the tokenizer "
                    f"(tokens {ids}); choose a scheme whose identifiers it can spell, e.g. "
                    "space-separated letters for a word-level vocabulary"
                )
            key = tuple(ids)
            if key in seen:
                raise IdentifierError(
                    f"identifiers {text!r} ({item!r}) and {identifiers[seen[key]]!r} "
                    f"({seen[key]!r}) tokenize alike; the scheme does not fit the tokenizer"
                )
            seen[key] = item
            out[item] = [*ids, self.eos]
        return out

    def build_trie(self, identifiers: Identifiers) -> Trie:
        """A trie of every identifier's tokens, each leaf holding its item id."""
        return Trie.build(
            ((seq, item) for item, seq in self.identifier_tokens(identifiers).items()), self.eos
        )

    # ------------------------------------------------------------------ sources
    def text_source(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings and attention mask of query texts."""
        if self.seq2seq:
            side = "right"
        else:
            side = "left"
        old = self.tokenizer.padding_side
        self.tokenizer.padding_side = side
        try:
            enc = self.tokenizer(
                list(texts),
                padding=True,
                truncation=True,
                max_length=self.max_source_length,
                return_tensors="pt",
            )
        finally:
            self.tokenizer.padding_side = old
        ids = enc["input_ids"].to(self.device)
        emb = self.lm.get_input_embeddings()(ids)
        return emb, enc["attention_mask"].to(self.device)

    def image_source(
        self, features: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix embeddings and mask of image features (N, image_dim)."""
        x = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
        x = x.to(self.device, torch.float32)
        if x.ndim != 2 or x.shape[1] != self.image_dim:
            raise ValueError(f"image features must be (N, {self.image_dim}), got {tuple(x.shape)}")
        emb = self.image_proj(x).view(len(x), self.n_prefix, self.hidden)
        mask = torch.ones(len(x), self.n_prefix, dtype=torch.long, device=self.device)
        return emb, mask

    def _with_sep(self, emb: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sep = self.sep.to(emb.dtype).expand(len(emb), 1, -1)
        one = torch.ones(len(emb), 1, dtype=mask.dtype, device=mask.device)
        return torch.cat([emb, sep], 1), torch.cat([mask, one], 1)

    # ------------------------------------------------------------------ training
    def loss(
        self, emb: torch.Tensor, mask: torch.Tensor, targets: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """Mean token cross-entropy of the target identifiers given the sources."""
        n = max(len(t) for t in targets)
        labels = torch.full((len(targets), n), -100, dtype=torch.long)
        for r, t in enumerate(targets):
            labels[r, : len(t)] = torch.tensor(list(t))
        labels = labels.to(self.device)
        if self.seq2seq:
            return self.lm(inputs_embeds=emb, attention_mask=mask, labels=labels).loss
        src, src_mask = self._with_sep(emb, mask)
        tgt_ids = labels.clamp(min=0)
        tgt_emb = self.lm.get_input_embeddings()(tgt_ids)
        full = torch.cat([src, tgt_emb], 1)
        full_mask = torch.cat([src_mask, (labels != -100).long()], 1)
        position_ids = (full_mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.lm(
            inputs_embeds=full, attention_mask=full_mask, position_ids=position_ids
        ).logits
        # The logit at position i predicts token i + 1: the last source position (the
        # separator) predicts the first identifier token.
        pred = logits[:, src.shape[1] - 1 : -1]
        return nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), labels.reshape(-1))

    # ------------------------------------------------------------------ decoding
    @torch.inference_mode()
    def generate(
        self,
        emb: torch.Tensor,
        mask: torch.Tensor,
        trie: Trie,
        *,
        num_beams: int = 10,
        max_new_tokens: int = 32,
    ) -> list[list[tuple[Any, float]]]:
        """Trie-constrained beam search: for each source, ``num_beams`` (item, log-prob)
        pairs, best first. Scores are total log-probabilities of the identifier
        (``length_penalty=0``), so identifiers of different lengths compare fairly."""
        # Encoder-decoder outputs start with the decoder start token; decoder-only outputs
        # fed inputs_embeds hold the generated tokens alone.
        skip = 1 if self.seq2seq else 0
        if not self.seq2seq:
            emb, mask = self._with_sep(emb, mask)
        out = self.lm.generate(
            inputs_embeds=emb,
            attention_mask=mask,
            num_beams=num_beams,
            num_return_sequences=num_beams,
            prefix_allowed_tokens_fn=trie.prefix_allowed_tokens_fn(skip=skip),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            length_penalty=0.0,
            early_stopping=True,
            return_dict_in_generate=True,
            output_scores=True,
            eos_token_id=self.eos,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        seqs = out.sequences.tolist()
        scores = out.sequences_scores.tolist()
        results: list[list[tuple[Any, float]]] = []
        for q in range(len(emb)):
            row: list[tuple[Any, float]] = []
            seen: set[Any] = set()
            for b in range(num_beams):
                toks = seqs[q * num_beams + b][skip:]
                if self.eos in toks:
                    toks = toks[: toks.index(self.eos) + 1]
                try:
                    item = trie.get(toks)
                except KeyError:
                    continue  # a beam cut off by max_new_tokens: not a complete identifier
                if item not in seen:
                    seen.add(item)
                    row.append((item, float(scores[q * num_beams + b])))
            results.append(row)
        return results

    @torch.inference_mode()
    def generate_text(
        self, emb: torch.Tensor, mask: torch.Tensor, *, max_new_tokens: int = 32
    ) -> list[str]:
        """Unconstrained greedy decoding from the sources (a caption per image, say), with
        whitespace normalised."""
        if not self.seq2seq:
            emb, mask = self._with_sep(emb, mask)
        ids = self.lm.generate(
            inputs_embeds=emb,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.eos,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]

    # ------------------------------------------------------------------ persistence
    def save(
        self, directory: str | os.PathLike[str], identifiers: Identifiers | None = None
    ) -> None:
        """LM and tokenizer (``save_pretrained``), projection head (safetensors), config and
        identifiers (JSON), written into a temporary directory and swapped in."""
        import copy

        from safetensors.torch import save_file

        with atomic_directory(directory) as tmp:
            if self.is_lora:
                self.lm.save_pretrained(tmp / "adapter")
                copy.deepcopy(self.lm).merge_and_unload().save_pretrained(tmp / "lm")
            else:
                self.lm.save_pretrained(tmp / "lm")
            self.tokenizer.save_pretrained(tmp / "lm")
            head = {
                k: v.detach().cpu().contiguous()
                for k, v in self.state_dict().items()
                if not k.startswith("lm.")
            }
            save_file(head, str(tmp / HEAD_FILE))
            cfg = {
                "image_dim": self.image_dim,
                "n_prefix": self.n_prefix,
                "max_source_length": self.max_source_length,
                "seq2seq": self.seq2seq,
            }
            (tmp / MODEL_CONFIG).write_text(json.dumps(cfg, indent=2), encoding="utf-8")
            if identifiers is not None:
                (tmp / IDENTIFIERS_FILE).write_text(
                    json.dumps(identifiers.to_dict()), encoding="utf-8"
                )

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> tuple[GraceModel, Identifiers | None]:
        """A model written by :meth:`save`, and its identifiers when they were saved."""
        import transformers
        from safetensors.torch import load_file

        root = Path(directory)
        cfg = read_json(root / MODEL_CONFIG)
        auto = (
            transformers.AutoModelForSeq2SeqLM
            if cfg["seq2seq"]
            else transformers.AutoModelForCausalLM
        )
        lm = auto.from_pretrained(root / "lm")
        tok = transformers.AutoTokenizer.from_pretrained(root / "lm")
        model = cls(
            lm,
            tok,
            cfg["image_dim"],
            n_prefix=cfg["n_prefix"],
            max_source_length=cfg["max_source_length"],
        )
        missing, unexpected = model.load_state_dict(load_file(str(root / HEAD_FILE)), strict=False)
        bad = [k for k in missing if not k.startswith("lm.")] + list(unexpected)
        if bad:
            raise ValueError(f"{root / HEAD_FILE} does not match the model: {bad[:5]}")
        ids_file = root / IDENTIFIERS_FILE
        identifiers = Identifiers.from_dict(read_json(ids_file)) if ids_file.is_file() else None
        return model.eval(), identifiers
