"""Live ChatIR dialogs: a questioner asks, a (simulated) user answers, the retriever searches
after every round, and the target's rank is recorded per round."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vistrieve.evals.metrics import ABSENT_RANK, target_rank
from vistrieve.query_rewriting.chat import MAX_DIALOG_ROUNDS
from vistrieve.types import DialogTurn, Query, Retriever


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
