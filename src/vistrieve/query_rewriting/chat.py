"""Chat-based image search: ChatIR dialogs, the EIIRwQR feedback loop and ``ChatSession``.

* **ChatIR**: a dialog is a caption plus question/answer rounds; the round-``r`` query is
  the caption and the first ``r`` rounds joined (``Query(text, dialog).as_text()``). A
  questioner asks the next question (:class:`LLMQuestioner`, or any callable); an answerer
  answers it (a human callback, a VQA model, or :class:`SceneAnswerer`, which reads the
  shapes scene graph). :func:`run_dialogs` retrieves after every round and returns the
  target ranks from which cumulative Hits@K per round follow.
* **EIIRwQR**: :class:`FeedbackLoop` retrieves, shows the unseen top hits, takes relevance
  feedback (a user callback or :func:`simulated_feedback` from ground truth), captions the
  images marked relevant, and has an LLM denoise those captions and rewrite the query.
* :class:`ChatSession` holds one conversation for an application: send a message, get hits
  and the next question, mark hits relevant, save the state as JSON and restore it.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from vistrieve.errors import ModelOutputError
from vistrieve.llm import CachedLLM, ChatLLM
from vistrieve.llm.prompts import (
    DIALOG_SUMMARY,
    FEEDBACK_REWRITE,
    MAX_QUERY_CHARS,
    MAX_QUESTION_CHARS,
    QUESTIONER,
    PromptTemplate,
    cap_output,
    parse_field,
    sanitize,
)
from vistrieve.types import DialogTurn, Hit, Query, Retriever

logger = logging.getLogger(__name__)

MAX_DIALOG_ROUNDS = 20
"""Longest dialog a session or loop accepts (the query text grows with every round)."""

FALLBACK_QUESTIONS = (
    "how many objects are there?",
    "what colour is the shape on the left?",
    "what shape is in the middle?",
    "what colour is the shape on the right?",
    "how big is the shape on the left?",
    "what shape is on the right?",
)
"""Asked in order when the questioner's answer cannot be parsed (and logged as such)."""


def format_dialog(turns: Sequence[DialogTurn]) -> str:
    """Question/answer rounds as prompt text, one ``Q:``/``A:`` pair per round."""
    return "\n".join(f"Q: {t.question}\nA: {t.answer}" for t in turns) or "(none yet)"


class GenericQuestioner:
    """Asks the generic questions in order, with no LLM; ``None`` once all were asked."""

    def __init__(self, questions: Sequence[str] = FALLBACK_QUESTIONS) -> None:
        self.questions = tuple(questions)

    def __call__(self, caption: str, turns: Sequence[DialogTurn]) -> str | None:
        asked = {t.question for t in turns}
        return next((q for q in self.questions if q not in asked), None)


class LLMQuestioner:
    """Asks the next question of a dialog with a chat model (ChatIR's questioner).

    An answer without a usable ``Question:`` line, or one that repeats an asked question,
    is logged and replaced by the first unasked question of ``fallback`` (counted in
    ``cost()["question_fallbacks"]``). A question longer than :data:`MAX_QUESTION_CHARS`
    is cut to that length (logged, counted in ``cost()["truncated_outputs"]``). An LLM that
    raises or answers with no text raises :class:`~vistrieve.errors.LLMError`.
    """

    def __init__(
        self,
        llm: ChatLLM,
        *,
        prompt: PromptTemplate = QUESTIONER,
        fallback: Sequence[str] = FALLBACK_QUESTIONS,
    ) -> None:
        self.llm = llm if isinstance(llm, CachedLLM) else CachedLLM(llm)
        self.prompt = prompt
        self.fallback = tuple(fallback)
        self.fallbacks = 0
        self.truncated = 0

    def __call__(self, caption: str, turns: Sequence[DialogTurn]) -> str:
        """The next question given the caption and the rounds so far.

        Raises:
            LLMError: the LLM raised or answered with no text.
        """
        answer = self.llm.complete(
            self.prompt.messages(caption=caption, dialog=format_dialog(turns))
        )
        question = parse_field(answer, "Question")
        if question and "question" not in answer[:2000].lower() and not question.endswith("?"):
            question = None  # a bare line that is not a question: small models ramble
        if question:
            question, cut = cap_output(question, MAX_QUESTION_CHARS, what="question")
            self.truncated += cut
        asked = {t.question.strip().lower() for t in turns}
        if question and question.strip().lower() not in asked:
            return question
        self.fallbacks += 1
        logger.warning("questioner answer unusable (%r); asking a fallback question", answer[:80])
        for q in self.fallback:
            if q.lower() not in asked:
                return q
        return self.fallback[len(turns) % len(self.fallback)] if self.fallback else "anything else?"

    def cost(self) -> dict[str, float]:
        """LLM cost and the number of fallback questions."""
        return {
            **self.llm.cost(),
            "question_fallbacks": float(self.fallbacks),
            "truncated_outputs": float(self.truncated),
        }


class VQAAnswerer:
    """Answers questions about one image with a transformers VQA model (BLIP VQA, ...)."""

    def __init__(self, model: Any, processor: Any, image: Any, *, max_new_tokens: int = 10):
        self.model = model.eval()
        self.processor = processor
        self.image = image
        self.max_new_tokens = max_new_tokens

    def __call__(self, question: str) -> str:
        import torch

        from vistrieve.utils.images import load_image

        inputs = self.processor(
            images=load_image(self.image).convert("RGB"), text=question, return_tensors="pt"
        )
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        return str(self.processor.batch_decode(ids, skip_special_tokens=True)[0]).strip()


class DialogSummaryRewriter:
    """Rewrites dialog queries into one caption-like description with an LLM.

    A caption-trained first stage reads captions, not question/answer transcripts (and its
    text context may truncate a long dialog). Dialog queries with at least one round are
    summarised; other queries pass through. An unusable answer is logged and counted
    (``cost()["parse_failures"]``) and the dialog query is kept as it is; a description
    longer than :data:`MAX_QUERY_CHARS` is cut (logged, ``cost()["truncated_outputs"]``).
    An LLM that raises or answers with no text raises :class:`~vistrieve.errors.LLMError`.
    """

    def __init__(self, llm: ChatLLM, *, prompt: PromptTemplate = DIALOG_SUMMARY) -> None:
        self.llm = llm if isinstance(llm, CachedLLM) else CachedLLM(llm)
        self.prompt = prompt
        self.parse_failures = 0
        self.truncated = 0

    def rewrite(self, queries: Sequence[Query]) -> list[list[Query]]:
        """One query per input (:class:`~vistrieve.types.QueryRewriter`).

        Raises:
            LLMError: the LLM raised or answered with no text.
        """
        out = []
        for q in queries:
            if q.kind != "dialog" or not q.dialog:
                out.append([q])
                continue
            answer = self.llm.complete(
                self.prompt.messages(caption=str(q.text or ""), dialog=format_dialog(q.dialog))
            )
            text = parse_field(answer, "Description")
            if not text:
                self.parse_failures += 1
                logger.warning("dialog summary unusable (%r); keeping the dialog", answer[:80])
                out.append([q])
                continue
            text, cut = cap_output(text, MAX_QUERY_CHARS, what="dialog summary")
            self.truncated += cut
            meta = {**q.metadata, "rewriter": self.llm.name, "dialog_rounds": len(q.dialog)}
            out.append([Query(text=text, id=q.id, metadata=meta)])
        return out

    def cost(self) -> dict[str, float]:
        """LLM cost, unusable answers and answers cut to length."""
        return {
            **self.llm.cost(),
            "parse_failures": float(self.parse_failures),
            "truncated_outputs": float(self.truncated),
        }

    def report_notes(self) -> list[str]:
        """Which LLM summarised the dialogs."""
        return [f"dialogs summarised by LLM {self.llm.name!r}"]


# ----------------------------------------------------------------------------- EIIRwQR
def simulated_feedback(
    target_labels: Sequence[str],
    labels_of: Callable[[str], Sequence[str]],
    *,
    min_overlap: float = 0.5,
) -> Callable[[Query, Sequence[Hit]], set[str]]:
    """A simulated user who marks a hit relevant when it shares at least ``min_overlap`` of
    the target's labels (Jaccard), the ground truth standing in for a person."""
    want = set(target_labels)

    def fn(query: Query, shown: Sequence[Hit]) -> set[str]:
        out = set()
        for h in shown:
            have = set(labels_of(h.id))
            union = want | have
            if union and len(want & have) / len(union) >= min_overlap:
                out.add(h.id)
        return out

    return fn


@dataclass
class FeedbackRound:
    """One round of the feedback loop."""

    query: str
    shown: list[str]
    relevant: list[str]
    hits: list[str]


class FeedbackLoop:
    """EIIRwQR: retrieve -> show unseen top hits -> feedback -> captions -> LLM rewrite.

    Args:
        retriever: Text -> image retriever (a pipeline works).
        captioner: Captions the images marked relevant.
        llm: Denoises the captions and rewrites the query.
        rounds: Feedback rounds after the first retrieval.
        show: Unseen hits shown per round.
        k: Hits retrieved per round.
        prompt: Rewrite prompt (fields ``query`` and ``captions``).
    """

    def __init__(
        self,
        retriever: Retriever,
        captioner: Any,
        llm: ChatLLM,
        *,
        rounds: int = 3,
        show: int = 5,
        k: int = 10,
        prompt: PromptTemplate = FEEDBACK_REWRITE,
    ) -> None:
        if not 0 <= rounds <= MAX_DIALOG_ROUNDS:
            raise ValueError(f"rounds must be in [0, {MAX_DIALOG_ROUNDS}], got {rounds}")
        self.retriever = retriever
        self.captioner = captioner
        self.llm = llm if isinstance(llm, CachedLLM) else CachedLLM(llm)
        self.rounds, self.show, self.k, self.prompt = rounds, show, k, prompt
        self.parse_failures = 0
        self.truncated = 0

    def rewrite(self, query: str, captions: Sequence[str]) -> str:
        """The LLM's rewritten query (the old one when the answer is unusable), cut to
        :data:`MAX_QUERY_CHARS`.

        Raises:
            LLMError: the LLM raised or answered with no text.
        """
        listing = "\n".join(f"- {sanitize(c)}" for c in captions)
        answer = self.llm.complete(self.prompt.messages(query=query, captions=listing))
        new = parse_field(answer, "Query")
        if not new:
            self.parse_failures += 1
            logger.warning("rewrite answer unusable (%r); keeping the query", answer[:80])
            return query
        new, cut = cap_output(new, MAX_QUERY_CHARS, what="rewritten query")
        self.truncated += cut
        return new

    def run(
        self,
        query: str,
        feedback: Callable[[Query, Sequence[Hit]], set[str]],
        images: Mapping[str, Any],
    ) -> list[FeedbackRound]:
        """Run the loop for one query; ``images`` maps hit ids to images (for captions)."""
        seen: set[str] = set()
        text = query
        log: list[FeedbackRound] = []
        hits = self.retriever.retrieve([Query(text=text)], k=self.k)[0]
        for _ in range(self.rounds):
            shown = [h for h in hits if h.id not in seen][: self.show]
            seen.update(h.id for h in shown)
            relevant = sorted(feedback(Query(text=text), shown))
            log.append(FeedbackRound(text, [h.id for h in shown], relevant, [h.id for h in hits]))
            if relevant:
                caps = self.captioner.caption([images[i] for i in relevant])
                text = self.rewrite(query, caps)
            hits = self.retriever.retrieve([Query(text=text)], k=self.k)[0]
        log.append(FeedbackRound(text, [], [], [h.id for h in hits]))
        return log

    def cost(self) -> dict[str, float]:
        """LLM cost, unusable rewrite answers and rewrites cut to length."""
        return {
            **self.llm.cost(),
            "parse_failures": float(self.parse_failures),
            "truncated_outputs": float(self.truncated),
        }


# ----------------------------------------------------------------------------- session
@dataclass
class SessionState:
    """Everything a :class:`ChatSession` needs to continue: JSON-serialisable."""

    caption: str = ""
    turns: list[list[str]] = field(default_factory=list)
    pending_question: str | None = None
    relevant: list[str] = field(default_factory=list)
    irrelevant: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)
    rewritten: str | None = None
    log: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SessionReply:
    """What the application shows after a message: hits and the agent's next question."""

    hits: list[Hit]
    question: str | None
    query: str


def _dialog(state: SessionState) -> tuple[DialogTurn, ...]:
    return tuple(DialogTurn(q, a) for q, a in state.turns)


def _query_text(state: SessionState) -> str:
    if state.rewritten:
        return state.rewritten
    return Query(text=state.caption, dialog=_dialog(state)).as_text()


def _checked_question(question: Any) -> str | None:
    """A questioner's output as a capped question, or ``None`` when it asks nothing.

    Raises:
        ModelOutputError: the questioner returned something that is not text.
    """
    if question is None:
        return None
    if not isinstance(question, str):
        raise ModelOutputError("the questioner returned something that is not text", question)
    return cap_output(question, MAX_QUESTION_CHARS, what="question")[0]


class ChatSession:
    """One chat-based image search conversation.

    The first message is the description; after the agent asks a question, the next
    message is its answer; otherwise a message adds to the description. Every message runs
    rewrite -> retrieve (-> rerank, when ``retriever`` is a pipeline) and returns hits plus
    the next question. Feedback on hits (:meth:`feedback`) is used on the next message: the
    captions of relevant hits go to the LLM, which rewrites the query (EIIRwQR), and hits
    marked irrelevant are not shown again.

    With an ``agent`` (:class:`~vistrieve.query_rewriting.dialog_agent.DialogAgent`), the
    agent ranks (every round's query plus the answers, combined) and asks the next question
    from the current candidates; ``questioner`` is then not used.

    Args:
        retriever: Text -> image retriever or pipeline.
        questioner: Asks the next question (``None``: never asks).
        agent: The candidate-grounded agent (ranks, reformulates and asks).
        feedback_loop: Rewrites with feedback (``None``: feedback only filters hits).
        images: Id -> image, for captions of relevant hits.
        k: Hits returned per message.
        state: A state to continue from (see :meth:`to_json`).
        max_caption_chars: Longest description (the first message plus additions).
        max_log: Log entries kept (the oldest are dropped).
    """

    def __init__(
        self,
        retriever: Retriever,
        *,
        questioner: Callable[[str, Sequence[DialogTurn]], str | None] | None = None,
        agent: Any = None,
        feedback_loop: FeedbackLoop | None = None,
        images: Mapping[str, Any] | None = None,
        k: int = 10,
        state: SessionState | None = None,
        max_caption_chars: int = 1000,
        max_log: int = 50,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if max_caption_chars < 1 or max_log < 1:
            raise ValueError("max_caption_chars and max_log must be positive")
        self.max_caption_chars = max_caption_chars
        self.max_log = max_log
        self.retriever = retriever
        self.questioner = questioner
        self.agent = agent
        self.feedback_loop = feedback_loop
        self.images = images or {}
        self.k = k
        self.state = state or SessionState()

    @property
    def dialog(self) -> tuple[DialogTurn, ...]:
        """The question/answer rounds so far."""
        return _dialog(self.state)

    def query_text(self) -> str:
        """The text the next retrieval uses."""
        return _query_text(self.state)

    def send(self, message: str) -> SessionReply:
        """Take a user message; returns hits and the next question.

        The step is applied whole or not at all: when retrieval, the rewrite or the
        questioner raises (an LLM backend that fails, say), the session stays as it was.

        Raises:
            ValueError: an empty message, a description already at ``max_caption_chars``,
                or a dialog already at :data:`MAX_DIALOG_ROUNDS` rounds.
        """
        text = sanitize(message, max_chars=500).strip()
        if not text:
            raise ValueError("empty message: describe the image you are looking for")
        s = copy.deepcopy(self.state)
        if not s.caption:
            s.caption = text
        elif s.pending_question is not None:
            if len(s.turns) >= MAX_DIALOG_ROUNDS:
                raise ValueError(
                    f"the dialog has {MAX_DIALOG_ROUNDS} rounds already; start a new session"
                )
            s.turns.append([s.pending_question, text])
            s.pending_question = None
        else:
            s.caption = f"{s.caption}, {text}"
        if len(s.caption) > self.max_caption_chars:
            raise ValueError(
                f"the description is over {self.max_caption_chars} characters; start a new session"
            )
        if self.feedback_loop is not None and s.relevant:
            caps = self.feedback_loop.captioner.caption(
                [self.images[i] for i in s.relevant if i in self.images]
            )
            base = Query(text=s.caption, dialog=_dialog(s)).as_text()
            s.rewritten = self.feedback_loop.rewrite(base, caps) if caps else None
        else:
            s.rewritten = None
        hidden = set(s.irrelevant)
        if self.agent is not None and not s.rewritten:
            reply = self.agent.step(s.caption, _dialog(s), k=self.k + len(hidden))
            query = reply.query
            hits = [h for h in reply.hits if h.id not in hidden][: self.k]
            if len(s.turns) < MAX_DIALOG_ROUNDS:
                s.pending_question = _checked_question(reply.question)
        else:
            query = _query_text(s)
            hits = self.retriever.retrieve([Query(text=query)], k=self.k + len(hidden))[0]
            hits = [h for h in hits if h.id not in hidden][: self.k]
            if self.questioner is not None and len(s.turns) < MAX_DIALOG_ROUNDS:
                s.pending_question = _checked_question(self.questioner(s.caption, _dialog(s)))
        s.shown = [h.id for h in hits]
        s.log.append({"message": text, "query": query, "hits": s.shown,
                      "question": s.pending_question})  # fmt: skip
        del s.log[: -self.max_log]
        self.state = s
        return SessionReply(hits=hits, question=s.pending_question, query=query)

    def feedback(self, hit_id: str, relevant: bool) -> None:
        """Mark a shown hit relevant or not (used on the next message)."""
        s = self.state
        if hit_id not in s.shown and hit_id not in s.relevant + s.irrelevant:
            raise KeyError(f"{hit_id!r} was not shown in this session")
        for lst in (s.relevant, s.irrelevant):
            if hit_id in lst:
                lst.remove(hit_id)
        (s.relevant if relevant else s.irrelevant).append(hit_id)

    def to_json(self) -> str:
        """The session state as JSON."""
        return json.dumps(asdict(self.state))

    @classmethod
    def from_json(cls, data: str, retriever: Retriever, **kw: Any) -> ChatSession:
        """A session continued from :meth:`to_json` output (pass the same components)."""
        try:
            raw = json.loads(data)
            state = SessionState(**raw)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"not a chat session state: {exc}") from exc
        return cls(retriever, state=state, **kw)
