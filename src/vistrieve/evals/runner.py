"""Evaluators for every task, per-stage cost accounting, and the multi-method runner.

Evaluators follow sentence-transformers' ``InformationRetrievalEvaluator``: built with the
data, called with any :class:`~vistrieve.types.Retriever` (a dense retriever, a pipeline,
a generative retriever), returning ``{name}_{metric}`` floats, with a ``primary_metric``.
They only use ``retrieve(queries, k)``, so every kind of retriever is measured alike.

Cost accounting: the runner snapshots counters before and after each evaluation on every
stage object it can reach from the retriever: ``encoder.image_passes`` and
``encoder.text_passes``, and ``cost() -> dict[str, float]`` of any object implementing
:class:`CostReporter` (rerankers report ``pairs_evaluated``, rewriters ``llm_calls`` and
``llm_tokens``). A pipeline exposes its stage objects through ``stages()``.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vistrieve.data.tasks import ComposedDataset, DialogDataset
from vistrieve.evals.metrics import (
    cir_map_at_k,
    cir_recall_at_k,
    cir_recall_subset_at_k,
    cumulative_hits_at_k,
    mrr,
    rank_of_ids,
    recall_at_k,
)
from vistrieve.types import Corpus, Hit, Query, Retriever

logger = logging.getLogger(__name__)


@runtime_checkable
class CostReporter(Protocol):
    """A stage that reports cumulative cost counters (pairs evaluated, LLM calls ...)."""

    def cost(self) -> dict[str, float]: ...


def _batched(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for s in range(0, len(seq), n):
        yield seq[s : s + n]


def _supports_target(retriever: Retriever) -> bool:
    try:
        return "target" in inspect.signature(retriever.retrieve).parameters
    except (TypeError, ValueError):
        return False


def _retrieve(
    retriever: Retriever, queries: Sequence[Query], k: int, batch_size: int, **kw: Any
) -> list[list[Hit]]:
    out: list[list[Hit]] = []
    for batch in _batched(list(queries), batch_size):
        out.extend(retriever.retrieve(batch, k=k, **kw))
    return out


def _item_of(hit: Hit) -> str:
    return str(hit.metadata.get("item_id", hit.id))


def _ranks(rows: Sequence[Sequence[Hit]], targets: Sequence[str]) -> np.ndarray:
    return rank_of_ids([[_item_of(h) for h in row] for row in rows], list(targets))


def prefix(metrics: Mapping[str, float], name: str) -> dict[str, float]:
    """Prefix metric keys with ``{name}_`` (sentence-transformers' prefix_name_to_metrics)."""
    return {f"{name}_{k}" if name else k: v for k, v in metrics.items()}


class RetrievalEvaluator:
    """Image-text retrieval, both directions, 5-caption protocol, through ``retrieve``.

    Text -> image: every caption is a query whose positive is its image. Image -> text
    (when the retriever accepts ``target="text"``): every image is a query, a hit when any
    of its captions is retrieved. Metrics come from top-``max(ks)`` lists, so MRR is
    reported as ``MRR@{max(ks)}``.

    Args:
        corpus: Items with images and captions.
        name: Prefix of the metric keys.
        ks: Recall cut-offs.
        batch_size: Queries per ``retrieve`` call.
    """

    def __init__(
        self,
        corpus: Corpus,
        *,
        name: str = "",
        ks: Sequence[int] = (1, 5, 10),
        batch_size: int = 256,
    ) -> None:
        self.corpus = Corpus(corpus)
        self.name = name
        self.ks = tuple(sorted(ks))
        self.batch_size = batch_size
        self.primary_metric = prefix({"text_to_image_R@1": 0.0}, name).popitem()[0]

    def __call__(self, retriever: Retriever) -> dict[str, float]:
        """Evaluate ``retriever``; returns prefixed metrics (fractions in [0, 1])."""
        depth = max(self.ks)
        texts, owners = self.corpus.caption_pairs()
        if not texts:
            raise ValueError("the corpus has no captions to use as text queries")
        hits = _retrieve(retriever, [Query(text=t) for t in texts], depth, self.batch_size)
        ranks = _ranks(hits, owners)
        out: dict[str, float] = {
            f"text_to_image_R@{k}": v for k, v in recall_at_k(ranks, self.ks).items()
        }
        out[f"text_to_image_MRR@{depth}"] = mrr(ranks)
        if _supports_target(retriever):
            items = [it for it in self.corpus.values() if it.image is not None and it.captions]
            if not items:
                logger.info("no item has an image; image->text is not evaluated")
                return prefix(out, self.name)
            queries = [Query(image=it.image) for it in items]
            rows = _retrieve(retriever, queries, depth, self.batch_size, target="text")
            i_ranks = _ranks(rows, [it.id for it in items])
            out.update(
                {f"image_to_text_R@{k}": v for k, v in recall_at_k(i_ranks, self.ks).items()}
            )
            out[f"image_to_text_MRR@{depth}"] = mrr(i_ranks)
        else:
            logger.info("retriever has no text target; image->text is not evaluated")
        return prefix(out, self.name)


class ComposedEvaluator:
    """Composed retrieval (CIRR/CIRCO style): R@K, R_subset@K and mAP@K.

    The reference image is dropped from every ranking before scoring (CIRR protocol).

    Args:
        dataset: Corpus plus composed examples.
        name: Prefix of the metric keys.
        ks: Cut-offs for R@K and mAP@K.
        subset_ks: Cut-offs for R_subset@K (only when examples carry subsets).
        batch_size: Queries per ``retrieve`` call.
    """

    def __init__(
        self,
        dataset: ComposedDataset,
        *,
        name: str = "",
        ks: Sequence[int] = (1, 5, 10, 50),
        subset_ks: Sequence[int] = (1, 2, 3),
        batch_size: int = 128,
    ) -> None:
        if not dataset.examples:
            raise ValueError(f"composed dataset {dataset.name!r} has no examples")
        self.dataset = dataset
        self.name = name
        self.ks = tuple(sorted(ks))
        self.subset_ks = tuple(subset_ks)
        self.batch_size = batch_size
        self.primary_metric = f"{name}_R@1" if name else "R@1"

    def __call__(self, retriever: Retriever) -> dict[str, float]:
        """Evaluate ``retriever`` on the composed queries."""
        examples = list(self.dataset.examples)
        queries = [ex.query(self.dataset.corpus) for ex in examples]
        rows = _retrieve(retriever, queries, max(self.ks) + 1, self.batch_size)
        ranked = [[_item_of(h) for h in row] for row in rows]
        targets = [list(ex.target_ids) for ex in examples]
        exclude = [[ex.reference_id] for ex in examples]
        out: dict[str, float] = {}
        out.update(
            {
                f"R@{k}": v
                for k, v in cir_recall_at_k(ranked, targets, self.ks, exclude_ids=exclude).items()
            }
        )
        out.update(
            {
                f"mAP@{k}": v
                for k, v in cir_map_at_k(ranked, targets, self.ks, exclude_ids=exclude).items()
            }
        )
        if all(ex.subset_ids for ex in examples):
            sub = cir_recall_subset_at_k(
                ranked,
                targets,
                [list(ex.subset_ids) for ex in examples],
                self.subset_ks,
                exclude_ids=exclude,
            )
            out.update({f"R_subset@{k}": v for k, v in sub.items()})
        return prefix(out, self.name)


class DialogEvaluator:
    """ChatIR dialog retrieval: cumulative Hits@K after each round 0..R.

    Args:
        dataset: Corpus plus dialogs.
        name: Prefix of the metric keys.
        rounds: Rounds to evaluate (default: the longest dialog).
        k: Cut-off of Hits@K.
        batch_size: Queries per ``retrieve`` call.
    """

    def __init__(
        self,
        dataset: DialogDataset,
        *,
        name: str = "",
        rounds: int | None = None,
        k: int = 10,
        batch_size: int = 256,
    ) -> None:
        if not dataset.examples:
            raise ValueError(f"dialog dataset {dataset.name!r} has no dialogs")
        self.dataset = dataset
        self.name = name
        self.rounds = rounds if rounds is not None else max(len(e.turns) for e in dataset.examples)
        self.k = k
        self.batch_size = batch_size
        self.primary_metric = (
            f"{name}_hits@{k}_round{self.rounds}" if name else f"hits@{k}_round{self.rounds}"
        )
        self.last_curve: list[float] = []

    def target_ranks(self, retriever: Retriever) -> np.ndarray:
        """int (n_dialogs, rounds + 1): rank of each dialog's target after each round."""
        examples = list(self.dataset.examples)
        ranks = np.empty((len(examples), self.rounds + 1), dtype=np.int64)
        for r in range(self.rounds + 1):
            rows = _retrieve(
                retriever, [ex.query(rounds=r) for ex in examples], self.k, self.batch_size
            )
            ranks[:, r] = _ranks(rows, [ex.target_id for ex in examples])
        return ranks

    def __call__(self, retriever: Retriever) -> dict[str, float]:
        """Evaluate ``retriever``; also keeps the per-round curve in ``last_curve``."""
        curve = cumulative_hits_at_k(self.target_ranks(retriever), self.k)
        self.last_curve = [float(x) for x in curve]
        return prefix(
            {f"hits@{self.k}_round{r}": v for r, v in enumerate(self.last_curve)}, self.name
        )


# --------------------------------------------------------------------------- cost
def _stage_objects(retriever: Any) -> list[tuple[str, Any]]:
    """Objects whose counters describe the retriever's cost, with a stage label."""
    found: list[tuple[str, Any]] = []
    stages = getattr(retriever, "stages", None)
    if callable(stages):
        found.extend(stages())
    else:
        found.append((getattr(retriever, "name", "retriever"), retriever))
    for label, obj in list(found):
        enc = getattr(obj, "encoder", None)
        if enc is not None:
            found.append((f"{label}.encoder", enc))
    return found


def _snapshot(retriever: Any) -> dict[str, float]:
    snap: dict[str, float] = {}
    for label, obj in _stage_objects(retriever):
        for attr in ("image_passes", "text_passes"):
            if isinstance(getattr(obj, attr, None), int):
                snap[f"{label}.{attr}"] = float(getattr(obj, attr))
        if isinstance(obj, CostReporter):
            for k, v in obj.cost().items():
                snap[f"{label}.{k}"] = float(v)
    return snap


# --------------------------------------------------------------------------- runner
@dataclass
class MethodResult:
    """One method's results across evaluators."""

    metrics: dict[str, float] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def evaluate(
    methods: Mapping[str, Retriever],
    evaluators: Sequence[Any],
    *,
    continue_on_error: bool = False,
    title: str = "vistrieve evaluation",
) -> Any:
    """Run every method on every evaluator and collect metrics, cost and time.

    Args:
        methods: Method name -> retriever (a baseline and the new methods).
        evaluators: Callables ``evaluator(retriever) -> dict`` (with ``primary_metric``).
        continue_on_error: Record a failing method's error in the report and go on;
            by default the error is raised with the method's name.
        title: Report title.

    Returns:
        An :class:`~vistrieve.evals.report.EvalReport`.
    """
    from vistrieve.evals.report import EvalReport

    report = EvalReport(title=title)
    for name, retriever in methods.items():
        result = MethodResult()
        notes = getattr(retriever, "report_notes", None)
        if callable(notes):
            result.notes.extend(notes())
        for ev in evaluators:
            label = type(ev).__name__ + (f"[{ev.name}]" if getattr(ev, "name", "") else "")
            before = _snapshot(retriever)
            t0 = time.perf_counter()
            try:
                metrics = ev(retriever)
            except Exception as exc:
                if not continue_on_error:
                    raise RuntimeError(f"method {name!r} failed in {label}: {exc}") from exc
                logger.error("method %r failed in %s: %s", name, label, exc)
                result.error = f"{label}: {type(exc).__name__}: {exc}"
                break
            result.seconds[label] = time.perf_counter() - t0
            after = _snapshot(retriever)
            for key, value in after.items():
                delta = value - before.get(key, 0.0)
                if delta:
                    result.cost[key] = result.cost.get(key, 0.0) + delta
            result.metrics.update(metrics)
            curve = getattr(ev, "last_curve", None)
            if curve:
                result.curves[label] = list(curve)
        report.methods[name] = result
    return report
