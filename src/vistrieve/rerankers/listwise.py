"""Listwise reranking by a (multimodal) chat model that picks among lettered options.

The InternLM-XComposer pattern: the first stage's candidates are shown to a chat model as
options ``A``, ``B``, ``C``, ... (a description of each candidate for a text-only LLM, the
images themselves for a vision LLM) and the model is asked which option matches the query.
The choice is read from the **logits of the option letters** at the answer position, never
by parsing generated text, so every option gets a probability and nothing silently falls
back to option A.

Chat models prefer some positions (usually the first or the last). Each group of options is
therefore shown under ``n_permutations`` orders (cyclic shifts by default, so with
``n_permutations == window`` every candidate appears once at every position) and a
candidate's score is its log-probability averaged over the orders. The reranker also counts
which position the model would have picked under each order: with balanced orders the true
answer sits at every position equally often, so any skew in :meth:`ListwiseReranker.position_bias`
is the model's position bias.

Scorers (anything with ``letter_logprobs(prompts) -> array``):

* :class:`HFLetterScorer`: a transformers causal LM (text-only LLM), e.g. SmolLM2; reads the
  next-token logits after the chat template's assistant prefix.
* :class:`HFVisionLetterScorer`: a transformers vision-language model with a processor that
  takes several images per prompt (LLaVA-OneVision, Idefics, Qwen2-VL, ...).
* :class:`ChatModelLetterScorer`: any langchain-core chat model that returns token
  log-probabilities (OpenAI-style ``logprobs``); a model that cannot is an error.
"""

from __future__ import annotations

import logging
import math
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vistrieve.errors import ModelOutputError
from vistrieve.rerankers.base import BaseReranker, Scores
from vistrieve.types import Hit, Item, Query

logger = logging.getLogger(__name__)

LETTERS = string.ascii_uppercase

DEFAULT_INSTRUCTION = (
    "Which option best matches the request? Answer with the letter of one option only."
)


class LogitsUnavailableError(RuntimeError):
    """The chat model cannot return the token log-probabilities listwise scoring needs."""


@dataclass
class ListwisePrompt:
    """One multiple-choice question: the query and the options in display order.

    Attributes:
        query: The request, as text.
        options: The text shown for each option (a description, or an image placeholder).
        images: The option images in display order (vision scorers), else empty.
        instruction: The question asked after the options.
    """

    query: str
    options: list[str]
    images: list[Any] = field(default_factory=list)
    instruction: str = DEFAULT_INSTRUCTION

    @property
    def letters(self) -> list[str]:
        """The option letters, ``A`` first."""
        return list(LETTERS[: len(self.options)])

    def render(self) -> str:
        """The user message: request, lettered options, question."""
        lines = [f"Request: {self.query}", "Options:"]
        lines += [
            f"{letter}. {text}" for letter, text in zip(self.letters, self.options, strict=True)
        ]
        lines.append(self.instruction)
        return "\n".join(lines)


@runtime_checkable
class LetterScorer(Protocol):
    """Returns, for each prompt, the log-probability of each option letter (row-normalised
    over that prompt's letters). Rows are padded with ``-inf`` to the longest prompt."""

    def letter_logprobs(self, prompts: Sequence[ListwisePrompt]) -> np.ndarray: ...


def _normalise_rows(logits: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Log-softmax each row over its first ``counts[i]`` entries; the rest become -inf."""
    out = np.full(logits.shape, -np.inf, dtype=np.float64)
    for i, n in enumerate(counts):
        row = logits[i, :n].astype(np.float64)
        if not np.all(np.isfinite(row)):
            raise ValueError(
                f"letter logits of prompt {i} are not finite ({row.tolist()}); "
                "the model gives no usable score for some option"
            )
        m = row.max()
        out[i, :n] = row - (m + math.log(np.exp(row - m).sum()))
    return out


def letter_token_ids(tokenizer: Any, letters: Sequence[str]) -> list[list[int]]:
    """Token ids that spell each letter as the first answer token (``"A"`` and ``" A"``).

    Raises:
        ValueError: when the tokenizer has no single token for some letter.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    ids: list[list[int]] = []
    for letter in letters:
        found: list[int] = []
        for form in (letter, " " + letter):
            toks = tokenizer.encode(form, add_special_tokens=False)
            if len(toks) == 1 and toks[0] != unk and toks[0] not in found:
                found.append(int(toks[0]))
        if not found:
            raise ValueError(
                f"the tokenizer has no single token for option letter {letter!r}; "
                "listwise scoring needs one token per letter (use fewer options or another model)"
            )
        ids.append(found)
    return ids


class HFLetterScorer:
    """Letter log-probabilities from a transformers causal LM (text-only).

    The prompt goes through the tokenizer's chat template (when it has one) with the
    generation prompt appended, followed by ``answer_prefix``; the next-token logits there are
    read at each letter's token(s) (``"A"`` and ``" A"`` are pooled by log-sum-exp).

    Args:
        model: A ``*ForCausalLM``.
        tokenizer: Its tokenizer.
        system: Optional system message.
        answer_prefix: Text placed after the assistant turn starts (e.g. ``"Answer:"``).
        batch_size: Prompts per forward pass.
        device: Torch device.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        system: str | None = "You rank images for a search engine.",
        answer_prefix: str = "Answer:",
        batch_size: int = 8,
        device: str = "cpu",
    ) -> None:
        import torch

        self.torch = torch
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.system = system
        self.answer_prefix = answer_prefix
        self.batch_size = batch_size
        self.device = device
        self.prompts_evaluated = 0
        self.tokens_evaluated = 0

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, gguf_file: str | None = None, **kw: Any
    ) -> HFLetterScorer:
        """Load a causal LM and its tokenizer by hub name or local path (``gguf_file`` for a
        GGUF checkpoint such as SmolLM2's)."""
        from vistrieve.llm import load_causal_lm

        model, tok = load_causal_lm(name_or_path, gguf_file=gguf_file)
        return cls(model, tok, **kw)

    def _text(self, prompt: ListwisePrompt) -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            messages = []
            if self.system:
                messages.append({"role": "system", "content": self.system})
            messages.append({"role": "user", "content": prompt.render()})
            text = str(
                tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
        else:
            text = (self.system + "\n" if self.system else "") + prompt.render() + "\n"
        return text + self.answer_prefix

    def letter_logprobs(self, prompts: Sequence[ListwisePrompt]) -> np.ndarray:
        """Log-probabilities of each prompt's letters, ``-inf``-padded (:class:`LetterScorer`)."""
        torch = self.torch
        width = max((len(p.options) for p in prompts), default=0)
        ids = letter_token_ids(self.tokenizer, LETTERS[:width])
        raw = np.full((len(prompts), width), -np.inf)
        tok = self.tokenizer
        # Left padding keeps every prompt's answer position at index -1.
        old_side = getattr(tok, "padding_side", "right")
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        try:
            for start in range(0, len(prompts), self.batch_size):
                chunk = prompts[start : start + self.batch_size]
                enc = tok(
                    [self._text(p) for p in chunk],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                ).to(self.device)
                with torch.inference_mode():
                    logits = self.model(**enc).logits[:, -1, :].float()
                logp = torch.log_softmax(logits, dim=-1).cpu().numpy()
                for j, p in enumerate(chunk):
                    for li in range(len(p.options)):
                        raw[start + j, li] = np.logaddexp.reduce(logp[j, ids[li]])
                self.prompts_evaluated += len(chunk)
                self.tokens_evaluated += int(enc["attention_mask"].sum())
        finally:
            tok.padding_side = old_side
        return _normalise_rows(raw, [len(p.options) for p in prompts])

    def cost(self) -> dict[str, float]:
        """Prompts and prompt tokens evaluated so far."""
        return {
            "llm_calls": float(self.prompts_evaluated),
            "llm_tokens": float(self.tokens_evaluated),
        }


class HFVisionLetterScorer(HFLetterScorer):
    """Letter log-probabilities from a transformers vision-language model.

    The options are images: each option line reads ``"A. <image>"`` with the processor's
    image placeholder, and the images go to the processor in display order. Works with
    processors that accept several images per prompt and a chat template with ``{"type":
    "image"}`` parts (LLaVA-OneVision, Idefics2/3, Qwen2-VL and similar).

    Args:
        model: A vision-language ``*ForConditionalGeneration`` / ``AutoModelForImageTextToText``.
        processor: Its processor (tokenizer + image processor + chat template).
        system, answer_prefix, batch_size, device: As :class:`HFLetterScorer`.
    """

    def __init__(self, model: Any, processor: Any, **kw: Any) -> None:
        super().__init__(model, processor.tokenizer, **kw)
        self.processor = processor

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kw: Any) -> HFVisionLetterScorer:
        """Load a vision-language model and its processor by hub name or local path."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(name_or_path)
        model = AutoModelForImageTextToText.from_pretrained(name_or_path)
        return cls(model, processor, **kw)

    def letter_logprobs(self, prompts: Sequence[ListwisePrompt]) -> np.ndarray:
        """Log-probabilities of each prompt's letters, with the option images shown."""
        torch = self.torch
        width = max((len(p.options) for p in prompts), default=0)
        ids = letter_token_ids(self.tokenizer, LETTERS[:width])
        raw = np.full((len(prompts), width), -np.inf)
        for i, p in enumerate(prompts):
            if len(p.images) != len(p.options):
                raise ValueError(
                    f"vision listwise prompt has {len(p.options)} options but "
                    f"{len(p.images)} images; build the reranker with show='images'"
                )
            content: list[dict[str, str]] = [
                {"type": "text", "text": f"Request: {p.query}\nOptions:"}
            ]
            for letter in p.letters:
                content += [{"type": "text", "text": f"\n{letter}."}, {"type": "image"}]
            content.append({"type": "text", "text": "\n" + p.instruction})
            messages = []
            if self.system:
                messages.append(
                    {"role": "system", "content": [{"type": "text", "text": self.system}]}
                )
            messages.append({"role": "user", "content": content})
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            enc = self.processor(
                text=text + self.answer_prefix, images=list(p.images), return_tensors="pt"
            ).to(self.device)
            with torch.inference_mode():
                logits = self.model(**enc).logits[0, -1, :].float()
            logp = torch.log_softmax(logits, dim=-1).cpu().numpy()
            for li in range(len(p.options)):
                raw[i, li] = np.logaddexp.reduce(logp[ids[li]])
            self.prompts_evaluated += 1
            self.tokens_evaluated += int(enc["input_ids"].shape[1])
        return _normalise_rows(raw, [len(p.options) for p in prompts])


class ChatModelLetterScorer:
    """Letter log-probabilities from a langchain-core chat model's token log-probabilities.

    The model is invoked with ``logprobs=True, top_logprobs=N`` (the OpenAI convention,
    also served by vLLM, llama.cpp's server and others) and the first generated token's
    ``top_logprobs`` are read from ``response_metadata["logprobs"]``. Letters outside the
    returned top-N get ``floor_logprob``. A model whose responses carry no log-probabilities
    raises :class:`LogitsUnavailableError`; nothing falls back to the generated text.
    Malformed log-probability metadata raises :class:`~vistrieve.errors.ModelOutputError`
    quoting it.

    When no option letter is among the top-N tokens, every option would get the floor,
    that is equal scores: with ``on_no_letter="error"`` (the default) that raises
    :class:`~vistrieve.errors.ModelOutputError` naming the tokens the model preferred;
    with ``"uniform"`` the prompt is scored uniformly, logged and counted
    (``cost()["no_letter_prompts"]``).

    Args:
        chat_model: A ``BaseChatModel``.
        top_logprobs: How many alternatives to request (OpenAI allows up to 20).
        floor_logprob: Log-probability given to a letter absent from the top-N.
        system: Optional system message.
        on_no_letter: ``"error"`` or ``"uniform"`` (see above).
    """

    def __init__(
        self,
        chat_model: Any,
        *,
        top_logprobs: int = 20,
        floor_logprob: float = -30.0,
        system: str | None = "You rank images for a search engine.",
        on_no_letter: str = "error",
    ) -> None:
        if on_no_letter not in ("error", "uniform"):
            raise ValueError(f"on_no_letter must be 'error' or 'uniform', got {on_no_letter!r}")
        self.chat_model = chat_model
        self.top_logprobs = top_logprobs
        self.floor_logprob = floor_logprob
        self.system = system
        self.on_no_letter = on_no_letter
        self.prompts_evaluated = 0
        self.no_letter_prompts = 0

    def _bound(self) -> Any:
        try:
            return self.chat_model.bind(logprobs=True, top_logprobs=self.top_logprobs)
        except (AttributeError, NotImplementedError, TypeError) as exc:
            raise LogitsUnavailableError(
                f"{type(self.chat_model).__name__} cannot be asked for log-probabilities ({exc})"
            ) from exc

    def letter_logprobs(self, prompts: Sequence[ListwisePrompt]) -> np.ndarray:
        """Log-probabilities of each prompt's letters (see :class:`LetterScorer`)."""
        from langchain_core.messages import HumanMessage, SystemMessage

        model = self._bound()
        width = max((len(p.options) for p in prompts), default=0)
        raw = np.full((len(prompts), width), -np.inf)
        for i, p in enumerate(prompts):
            messages: list[Any] = [SystemMessage(self.system)] if self.system else []
            messages.append(HumanMessage(p.render()))
            reply = model.invoke(messages)
            self.prompts_evaluated += 1
            meta = getattr(reply, "response_metadata", None) or {}
            logprobs = meta.get("logprobs") if isinstance(meta, dict) else None
            if logprobs is not None and not isinstance(logprobs, dict):
                raise ModelOutputError(
                    f"{type(self.chat_model).__name__} returned malformed log-probabilities "
                    "(response_metadata['logprobs'] is not an object)",
                    logprobs,
                )
            content = (logprobs or {}).get("content")
            if not content:
                raise LogitsUnavailableError(
                    f"{type(self.chat_model).__name__} returned no token log-probabilities "
                    "(response_metadata['logprobs']['content'] is missing); listwise reranking "
                    "scores the option letters from log-probabilities and never parses the "
                    "answer text: use a model or server that supports logprobs, or "
                    "HFLetterScorer with local weights"
                )
            alternatives = _alternatives(content, type(self.chat_model).__name__)
            best: dict[str, float] = {}
            for token, logprob in alternatives:
                if token in p.letters:
                    best[token] = max(best.get(token, -np.inf), logprob)
            if not best:
                tokens = [t for t, _ in alternatives]
                if self.on_no_letter == "error":
                    raise ModelOutputError(
                        f"{type(self.chat_model).__name__} put no option letter "
                        f"({p.letters[0]}..{p.letters[-1]}) among its top "
                        f"{len(tokens)} first tokens, so every option would score the same; "
                        "use a model that follows the answer format, or "
                        "on_no_letter='uniform' to score such prompts uniformly; top tokens",
                        tokens,
                    )
                self.no_letter_prompts += 1
                logger.warning(
                    "no option letter among the top tokens %r; scoring this prompt uniformly",
                    tokens[:10],
                )
            for li, letter in enumerate(p.letters):
                raw[i, li] = best.get(letter, self.floor_logprob)
        return _normalise_rows(raw, [len(p.options) for p in prompts])

    def cost(self) -> dict[str, float]:
        """LLM calls made so far and prompts scored uniformly for want of a letter."""
        return {
            "llm_calls": float(self.prompts_evaluated),
            "no_letter_prompts": float(self.no_letter_prompts),
        }


def _alternatives(content: Any, model: str) -> list[tuple[str, float]]:
    """``(token, logprob)`` of the first generated token and its top alternatives, from
    OpenAI-style ``logprobs["content"]``.

    Raises:
        ModelOutputError: the metadata does not have that shape (quoted).
    """
    try:
        first = content[0]
        entries = [*list(first.get("top_logprobs") or []), first]
        out = []
        for alt in entries:
            logprob = float(alt["logprob"])
            if not math.isfinite(logprob) and logprob != -math.inf:
                raise ValueError(f"logprob {logprob}")
            out.append((str(alt.get("token", "")).strip(), logprob))
        return out
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ModelOutputError(
            f"{model} returned malformed log-probabilities ({type(exc).__name__}: {exc}) in "
            "response_metadata['logprobs']['content']",
            content,
        ) from None


def caption_describer(item: Item) -> str:
    """An item's first caption (its description for a text-only LLM).

    Evaluation note: reference captions of the corpus make text-to-image reranking a text
    matching task; evaluate with generated captions (a captioner) instead.
    """
    if not item.captions:
        raise ValueError(f"item {item.id!r} has no caption to show the LLM; pass describe=")
    return item.captions[0]


class ListwiseReranker(BaseReranker):
    """Rerank candidates by a chat model's choice among lettered options.

    Candidates are split, in first-stage order, into groups of ``window`` (a short last
    group is filled up with the candidates just before it); each group is shown under
    ``n_permutations`` orders and each candidate scores the mean log-probability of its
    letter across the orders. Candidates in different groups are compared by that score.
    ``n_permutations=1`` shows each group once in first-stage order (and then the position
    bias goes straight into the ranking).

    Args:
        scorer: A :class:`LetterScorer`.
        corpus: Items by id (candidates' captions or images come from here).
        show: ``"text"`` (each option is ``describe(item)``) or ``"images"`` (each option is
            the image, for vision scorers).
        describe: Item -> option text (default :func:`caption_describer`).
        window: Options per prompt (2..26).
        n_permutations: Orders per group (cyclic shifts first; ``> window`` adds seeded
            random orders).
        instruction: The question asked after the options.
        seed: Seed of the extra random orders.
        name: Stage name in ``Hit.scores``.
    """

    def __init__(
        self,
        scorer: LetterScorer,
        corpus: Mapping[str, Item],
        *,
        show: str = "text",
        describe: Callable[[Item], str] = caption_describer,
        window: int = 4,
        n_permutations: int | None = None,
        instruction: str = DEFAULT_INSTRUCTION,
        seed: int = 0,
        name: str = "listwise",
    ) -> None:
        if show not in ("text", "images"):
            raise ValueError(f"show must be 'text' or 'images', got {show!r}")
        if not 2 <= window <= len(LETTERS):
            raise ValueError(f"window must be in 2..{len(LETTERS)}, got {window}")
        n_perm = window if n_permutations is None else n_permutations
        if n_perm <= 0:
            raise ValueError(f"n_permutations must be positive, got {n_permutations}")
        if not hasattr(scorer, "letter_logprobs"):
            raise TypeError(
                f"scorer {type(scorer).__name__} has no letter_logprobs(); listwise reranking "
                "needs letter log-probabilities (HFLetterScorer, ChatModelLetterScorer)"
            )
        self.scorer = scorer
        self.corpus = corpus
        self.show = show
        self.describe = describe
        self.window = window
        self.n_permutations = n_perm
        self.instruction = instruction
        self.seed = seed
        self.name = name
        # picks[p]: how often position p held the option with the highest log-probability.
        self.picks = np.zeros(window, dtype=np.int64)
        self.pairs_evaluated = 0

    def _orders(self, n: int) -> list[list[int]]:
        base = list(range(n))
        orders = [base[s:] + base[:s] for s in range(min(n, self.n_permutations))]
        rng = np.random.default_rng(self.seed)
        while len(orders) < self.n_permutations:
            orders.append([int(i) for i in rng.permutation(n)])
        return orders

    def _option(self, item: Item) -> tuple[str, Any]:
        if self.show == "images":
            from vistrieve.utils.images import load_image

            if item.image is None:
                raise ValueError(f"item {item.id!r} has no image to show the model")
            return "<image>", load_image(item.image)
        return self.describe(item), None

    def _score_lists(
        self, queries: Sequence[Query], candidates: Sequence[Sequence[Hit]]
    ) -> list[Scores]:
        """Mean letter log-probability of each candidate over the prompts that show it."""
        prompts: list[ListwisePrompt] = []
        # (query index, candidate positions in display order) per prompt
        layout: list[tuple[int, list[int]]] = []
        for qi, (query, cands) in enumerate(zip(queries, candidates, strict=True)):
            if not cands:
                raise ValueError(f"query {qi} has an empty candidate list")
            self.check_candidates([h.id for h in cands])
            text = query.as_text()
            options = [self._option(self.corpus[h.id]) for h in cands]
            n = len(cands)
            for g in range(0, n, self.window):
                # A short last group is filled up with the candidates just before it, so
                # that every score comes from a choice among `window` options.
                group = list(range(max(0, min(g, n - self.window)), min(g + self.window, n)))
                if len(group) == 1:
                    continue  # a single candidate needs no model call; it scores log 1 = 0
                for order in self._orders(len(group)):
                    shown = [group[o] for o in order]
                    prompts.append(
                        ListwisePrompt(
                            query=text,
                            options=[options[s][0] for s in shown],
                            images=[options[s][1] for s in shown] if self.show == "images" else [],
                            instruction=self.instruction,
                        )
                    )
                    layout.append((qi, shown))
        logp = self.scorer.letter_logprobs(prompts) if prompts else np.zeros((0, 0))
        if logp.shape[0] != len(prompts):
            raise ValueError(f"scorer returned {logp.shape[0]} rows for {len(prompts)} prompts")
        sums = [np.zeros(len(c)) for c in candidates]
        counts = [np.zeros(len(c)) for c in candidates]
        for row, (qi, shown) in enumerate(layout):
            vals = logp[row, : len(shown)]
            self.picks[int(np.argmax(vals))] += 1
            self.pairs_evaluated += len(shown)
            for pos, cand in enumerate(shown):
                sums[qi][cand] += vals[pos]
                counts[qi][cand] += 1
        return [
            np.divide(sums[qi], counts[qi], out=np.zeros(len(c)), where=counts[qi] > 0)
            for qi, c in enumerate(candidates)
        ]

    def position_bias(self) -> dict[str, Any]:
        """How often each display position was the model's top choice so far.

        Returns ``{"picks": [...], "share": [...], "max_deviation": float}``: with balanced
        orders an unbiased model picks every position equally often, so ``max_deviation``
        (the largest ``|share - 1/window|``) measures the position bias.
        """
        total = int(self.picks.sum())
        share = (self.picks / total).tolist() if total else [0.0] * self.window
        dev = max(abs(s - 1 / self.window) for s in share) if total else 0.0
        return {"picks": self.picks.tolist(), "share": share, "max_deviation": dev}

    def cost(self) -> dict[str, float]:
        """Pairs evaluated, the scorer's own counters, and top picks per display position
        (``picks_A``, ``picks_B``, ...: the position bias, see :meth:`position_bias`)."""
        inner = getattr(self.scorer, "cost", None)
        out: dict[str, float] = {"pairs_evaluated": float(self.pairs_evaluated)}
        out.update({k: float(v) for k, v in (inner() if callable(inner) else {}).items()})
        out.update({f"picks_{LETTERS[p]}": float(n) for p, n in enumerate(self.picks)})
        return out
