"""Live ChatIR dialogs: a questioner asks, a (simulated) user answers, the retriever searches
after every round, and the target's rank is recorded per round.

* :func:`run_dialogs`: any questioner callable and ChatIR's concatenated query.
* :func:`run_agent_dialogs`: the candidate-grounded
  :class:`~vistrieve.query_rewriting.dialog_agent.DialogAgent` against a
  :class:`SimulatedUser` (:class:`CaptionUser` for real photos; the shapes world's scene-graph
  user lives in its recipes), with :func:`~vistrieve.evals.metrics.dialog_metrics`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vistrieve.evals.metrics import ABSENT_RANK, dialog_metrics, target_rank
from vistrieve.query_rewriting.chat import MAX_DIALOG_ROUNDS
from vistrieve.query_rewriting.dialog_agent import (
    HYPERNYMS,
    WORD_GROUPS,
    CaptionWords,
    DialogAgent,
)
from vistrieve.types import DialogTurn, Query, Retriever
from vistrieve.utils.io import atomic_write_json


def run_dialogs(
    retriever: Retriever,
    captions: Sequence[str],
    targets: Sequence[str],
    answerers: Sequence[Callable[[str], str]],
    questioner: Callable[[str, Sequence[DialogTurn]], str],
    *,
    rounds: int = 5,
    k: int = 10,
    progress: bool = True,
) -> tuple[np.ndarray, list[list[DialogTurn]]]:
    """Live ChatIR: for each target, ask ``rounds`` questions and retrieve after each round.

    Returns the target's 0-based rank per round, ``(n, rounds + 1)`` with
    :data:`~vistrieve.evals.metrics.ABSENT_RANK` outside the top ``k`` (feed it to
    :func:`~vistrieve.evals.metrics.cumulative_hits_at_k`), and the dialogs.
    """
    from tqdm.auto import tqdm

    if not 0 <= rounds <= MAX_DIALOG_ROUNDS:
        raise ValueError(f"rounds must be in [0, {MAX_DIALOG_ROUNDS}], got {rounds}")
    if not (len(captions) == len(targets) == len(answerers)):
        raise ValueError("captions, targets and answerers must have the same length")
    ranks = np.full((len(captions), rounds + 1), ABSENT_RANK, dtype=np.int64)
    dialogs: list[list[DialogTurn]] = [[] for _ in captions]
    for r in tqdm(range(rounds + 1), desc="dialog rounds", disable=not progress):
        if r:
            for i, cap in enumerate(captions):
                q = questioner(cap, dialogs[i])
                dialogs[i].append(DialogTurn(q, answerers[i](q)))
        queries = [Query(text=c, dialog=tuple(d)) for c, d in zip(captions, dialogs, strict=True)]
        hits = retriever.retrieve(queries, k=k)
        for i, (hs, t) in enumerate(zip(hits, targets, strict=True)):
            ranks[i, r] = target_rank([h.id for h in hs], t)
    return ranks, dialogs


# ----------------------------------------------------------------------------- simulated users
class SimulatedUser(Protocol):
    """Answers the agent's questions about one target image, as a person would."""

    name: str

    def answer(self, target_id: str, question: str) -> str:
        """The answer to ``question`` about the image ``target_id``."""
        ...


class CaptionUser:
    """A simulated user who knows only the target's human captions (rule-based).

    The question's content words (folded as :class:`~vistrieve.query_rewriting.dialog_agent.
    CaptionWords` folds them: plurals, verb forms, a few synonyms) are looked up in the
    captions (a hypernym such as "person" counts when the captions name a member): all
    mentioned -> ``"yes"``; a salient thing (a member of
    :data:`~vistrieve.query_rewriting.dialog_agent.WORD_GROUPS`: people, animals, vehicles,
    places) that no caption names -> ``"no"``; otherwise ``"I don't know"``. With
    ``unsure`` > 0, that share of answers (chosen by a hash of ``seed``, target and
    question, so runs replay) is ``"I don't know"`` whatever the captions say.

    Args:
        captions_of: Target id -> the captions the user knows.
        unsure: Share of questions the user does not answer.
        seed: Seed of those choices.
    """

    name = "captions"

    def __init__(
        self,
        captions_of: Mapping[str, Sequence[str]],
        *,
        unsure: float = 0.0,
        seed: int = 0,
        groups: Sequence[frozenset[str]] = WORD_GROUPS,
    ) -> None:
        if not 0.0 <= unsure <= 1.0:
            raise ValueError(f"unsure must be in [0, 1], got {unsure}")
        self.captions_of = captions_of
        self.unsure = unsure
        self.seed = seed
        self.groups = tuple(groups)
        self.vocabulary = CaptionWords()
        self._known: dict[str, frozenset[str]] = {}

    def _words(self, target_id: str) -> frozenset[str]:
        if target_id not in self._known:
            try:
                caps = self.captions_of[target_id]
            except KeyError:
                raise KeyError(f"the simulated user has no captions of {target_id!r}") from None
            out: set[str] = set()
            for c in caps:
                out |= self.vocabulary.attributes(c)
            self._known[target_id] = frozenset(out)
        return self._known[target_id]

    def answer(self, target_id: str, question: str) -> str:
        """``"yes"``, ``"no"`` or ``"I don't know"`` from the target's captions."""
        known = self._words(target_id)
        if self.unsure > 0:
            digest = hashlib.sha256(f"{self.seed}|{target_id}|{question}".encode()).digest()
            if int.from_bytes(digest[:8], "big") / 2**64 < self.unsure:
                return "I don't know"
        asked = self.vocabulary.attributes(question)
        if not asked:
            return "I don't know"
        known = known | {h for h, members in HYPERNYMS.items() if known & members}
        if asked <= known:
            return "yes"
        for word in asked - known:
            if any(word in g for g in self.groups) or word in HYPERNYMS:
                return "no"
        return "I don't know"


class CachedUser:
    """A simulated user whose answers are stored in a JSON file, so dialogs replay.

    Answers found in the file are returned without asking ``user``; :meth:`save` writes the
    file (atomically). An LLM-backed user costs nothing on a re-run.
    """

    def __init__(self, user: SimulatedUser, path: str | os.PathLike[str]) -> None:
        self.user = user
        self.name = user.name
        self.path = Path(path)
        self.answers: dict[str, str] = {}
        self.hits = 0
        if self.path.is_file():
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"{self.path} is not an answer cache (expected a JSON object)")
            self.answers = {str(k): str(v) for k, v in data.items()}

    def answer(self, target_id: str, question: str) -> str:
        """The stored answer, else the user's (then stored)."""
        key = f"{target_id}\t{question}"
        if key in self.answers:
            self.hits += 1
            return self.answers[key]
        out = self.user.answer(target_id, question)
        self.answers[key] = out
        return out

    def save(self) -> Path:
        """Write the answers to the cache file."""
        atomic_write_json(self.path, self.answers)
        return self.path


# ----------------------------------------------------------------------------- agent dialogs
@dataclass
class AgentDialogResult:
    """Live dialogs of a :class:`~vistrieve.query_rewriting.dialog_agent.DialogAgent`."""

    ranks: np.ndarray
    dialogs: list[list[DialogTurn]]
    queries: list[list[str]]
    seconds: float
    n_gallery: int
    cost: dict[str, float] = field(default_factory=dict)

    def metrics(self, k: int = 10) -> dict[str, float]:
        """:func:`~vistrieve.evals.metrics.dialog_metrics` of the ranks."""
        return dialog_metrics(self.ranks, self.n_gallery, k)


def run_agent_dialogs(
    agent: DialogAgent,
    captions: Sequence[str],
    targets: Sequence[str],
    user: SimulatedUser,
    *,
    rounds: int = 5,
    n_gallery: int | None = None,
    progress: bool = True,
) -> AgentDialogResult:
    """Live dialogs: the agent ranks and asks, the simulated user answers, ``rounds`` times.

    The target's rank is read from the agent's whole candidate ranking after every round
    (:data:`~vistrieve.evals.metrics.ABSENT_RANK` when it is not among the candidates). A
    dialog in which the agent has nothing left to ask keeps its last ranking.
    """
    from tqdm.auto import tqdm

    if not 0 <= rounds <= MAX_DIALOG_ROUNDS:
        raise ValueError(f"rounds must be in [0, {MAX_DIALOG_ROUNDS}], got {rounds}")
    if len(captions) != len(targets):
        raise ValueError("captions and targets must have the same length")
    t0 = time.perf_counter()
    ranks = np.full((len(captions), rounds + 1), ABSENT_RANK, dtype=np.int64)
    dialogs: list[list[DialogTurn]] = []
    queries: list[list[str]] = []
    for i in tqdm(range(len(captions)), desc="dialogs", disable=not progress):
        turns: list[DialogTurn] = []
        qs: list[str] = []
        reply = agent.step(captions[i], turns)
        for r in range(rounds + 1):
            if r:
                if reply.question is not None:
                    said = user.answer(targets[i], reply.question)
                    turns.append(DialogTurn(reply.question, said))
                    reply = agent.step(captions[i], turns)
            rank = reply.ranking.rank_of(targets[i])
            ranks[i, r] = ABSENT_RANK if rank is None else rank
            qs.append(reply.query)
        dialogs.append(turns)
        queries.append(qs)
    return AgentDialogResult(
        ranks=ranks,
        dialogs=dialogs,
        queries=queries,
        seconds=time.perf_counter() - t0,
        n_gallery=int(n_gallery if n_gallery is not None else agent.pool),
        cost=agent.cost(),
    )


def dialog_table(results: Mapping[str, AgentDialogResult], *, k: int = 10, title: str = "") -> str:
    """A markdown table: cumulative Hits@K per round, mean rank rounds 0 and last, BRI,
    share of rounds whose rank got worse, wall seconds."""
    if not results:
        return ""
    n_rounds = max(r.ranks.shape[1] for r in results.values())
    head = " | ".join(f"H@{k} r{r}" for r in range(n_rounds))
    lines = [title, ""] if title else []
    lines += [
        f"| method | {head} | mean rank r0 | mean rank r{n_rounds - 1} | BRI | worse rounds | s |",
        "|---|" + "---:|" * (n_rounds + 5),
    ]
    for name, res in results.items():
        m = res.metrics(k)
        last = res.ranks.shape[1] - 1
        cells = " | ".join(f"{100 * m[f'hits@{k}_round{r}']:.1f}" for r in range(last + 1))
        lines.append(
            f"| {name} | {cells} | {m['mean_rank_round0']:.1f} | "
            f"{m[f'mean_rank_round{last}']:.1f} | {m['bri']:.3f} | "
            f"{100 * m['rank_worse_share']:.1f}% | {res.seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


@dataclass
class DialogSetup:
    """What live agent dialogs need: opening captions, targets, the user and the evidence."""

    captions: list[str]
    targets: list[str]
    user: SimulatedUser
    evidence_texts: Callable[[str], Sequence[str]]
    notes: list[str] = field(default_factory=list)


def caption_dialogs(
    corpus: Mapping[str, Any],
    *,
    n_dialogs: int = 200,
    user_captions: int = 3,
    seed: int = 0,
) -> DialogSetup:
    """Dialogs on a captioned photo corpus, with a :class:`CaptionUser`.

    Targets are the first ``n_dialogs`` ids in sorted order. Of each image's captions, the
    first ``user_captions`` are the user's (the opening query is one of them, chosen with
    ``seed``) and the rest are the gallery's evidence for the agent, standing in for a
    captioner: the agent never reads the captions the user answers from.

    Raises:
        ValueError: an image with fewer than ``user_captions + 1`` captions.
    """
    ids = sorted(corpus)
    short = [i for i in ids if len(corpus[i].captions) <= user_captions]
    if short:
        raise ValueError(
            f"{len(short)} images (e.g. {short[0]!r}) have at most {user_captions} captions; "
            "the user and the agent's evidence need disjoint captions (lower user_captions)"
        )
    rng = np.random.default_rng(seed)
    targets = ids[:n_dialogs]
    captions = [corpus[i].captions[int(rng.integers(user_captions))] for i in targets]
    user = CaptionUser({i: tuple(corpus[i].captions[:user_captions]) for i in ids}, seed=seed)

    def evidence(item_id: str) -> Sequence[str]:
        item = corpus.get(item_id)
        return tuple(item.captions[user_captions:]) if item is not None else ()

    notes = [
        f"{len(targets)} dialogs; the user knows captions 1-{user_captions} of the target "
        f"(the opening query is one of them); the agent reads captions {user_captions + 1}+ "
        "of every gallery image"
    ]
    return DialogSetup(captions, targets, user, evidence, notes)
