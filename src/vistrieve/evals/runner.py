"""Evaluators for every task, per-stage cost accounting, and the multi-method runner.

Evaluators follow sentence-transformers' ``InformationRetrievalEvaluator``: built with the
data, called with any :class:`~vistrieve.types.Retriever` (a dense retriever, a pipeline,
a generative retriever), returning ``{name}_{metric}`` floats, with a ``primary_metric``.
They only use ``retrieve(queries, k)``, so every kind of retriever is measured alike:

* :class:`RetrievalEvaluator`: image-text retrieval, both directions, with every caption
  of an image counted as a positive (the 5-caption protocol of CLIP_benchmark's
  ``zeroshot_retrieval``). :meth:`RetrievalEvaluator.evaluate_embeddings` is the exact
  fast path for dual encoders whose embeddings are at hand.
* :class:`ComposedEvaluator`: composed retrieval, CIRR protocol (the reference image is
  removed from every ranking) with CIRCO's multi-target mAP@K.
* :class:`DialogEvaluator`: ChatIR's cumulative Hits@K after each dialog round.

Metrics come from top-``depth`` lists: R@K is exact for every ``K <= depth``, while the
reciprocal rank of a positive below the depth counts as 0, so MRR is reported as
``MRR@{depth}``. The embedding fast path ranks the whole gallery and reports plain ``MRR``.

**Adding an evaluator.** :func:`evaluate` needs only the
:class:`~vistrieve.types.Evaluator` protocol (``primary_metric`` and
``__call__(retriever) -> dict[str, float]``). It also reads, when present: ``label`` (the
evaluator's key in the report), ``name`` (its metric prefix), ``last_curves``
(``dict[str, list[float]]``, per-round curves of the last call) and ``last_notes``
(``list[str]``, remarks about the last call). :class:`BaseEvaluator` provides all four.

**Cost accounting.** Before and after every evaluation the runner reads the counters of
every stage object it can reach from the retriever (see :func:`stage_objects`) and records
the increases as ``"{stage}.{counter}"``:

* attributes named in :data:`COUNTER_ATTRIBUTES` holding a number: encoder passes
  (``image_passes``, ``text_passes``), reranker ``pairs_evaluated``, LLM ``llm_calls`` and
  ``llm_tokens``;
* ``cost() -> dict[str, float]`` of any object implementing :class:`CostReporter`
  (cumulative counters, any names; its keys take precedence over same-named attributes).

A pipeline exposes its stages through ``stages() -> list[tuple[str, object]]`` (label,
component); ``encoder`` and ``retriever`` attributes are followed too. A method can attach
remarks to its report row through ``report_notes() -> list[str]`` on any stage object
(e.g. "R@K cannot exceed the number of beams").
"""

from __future__ import annotations

import inspect
import logging
import numbers
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeGuard, runtime_checkable

import numpy as np

from vistrieve.data.tasks import ComposedDataset, DialogDataset, PairedEmbeddings
from vistrieve.evals.metrics import (
    cir_map_at_k,
    cir_recall_at_k,
    cir_recall_subset_at_k,
    cumulative_hits_at_k,
    image_text_retrieval_metrics,
    mrr,
    prefix,
    rank_of_ids,
    recall_at_k,
)
from vistrieve.evals.report import EvalReport, MethodResult, Section
from vistrieve.types import Corpus, Encoder, Evaluator, Hit, Query, Retriever

logger = logging.getLogger(__name__)

COUNTER_ATTRIBUTES = ("image_passes", "text_passes", "pairs_evaluated", "llm_calls", "llm_tokens")
"""Numeric attributes read as cumulative cost counters on every reachable stage object."""

FOLLOWED_ATTRIBUTES = ("encoder", "retriever")
"""Attributes through which :func:`stage_objects` reaches further stage objects."""


@runtime_checkable
class CostReporter(Protocol):
    """A stage that reports cumulative cost counters.

    ``cost()`` returns counters that only grow while the stage works, e.g.
    ``{"pairs_evaluated": 512.0, "images_encoded": 40.0}`` for a reranker or
    ``{"llm_calls": 3.0, "llm_tokens": 1210.0, "seconds": 2.5}`` for a rewriter. The runner
    reports the increase of each counter over an evaluation as ``"{stage}.{key}"``.
    """

    def cost(self) -> dict[str, float]: ...


# --------------------------------------------------------------------------- helpers
def _batched(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for s in range(0, len(seq), n):
        yield seq[s : s + n]


def _check_ks(ks: Sequence[int], what: str = "ks") -> tuple[int, ...]:
    out = tuple(sorted({int(k) for k in ks}))
    if not out or out[0] < 1:
        raise ValueError(f"{what} must be positive integers, got {tuple(ks)}")
    return out


def _check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return batch_size


def _retrieve(retriever: Retriever, queries: Sequence[Query], k: int, **kw: Any) -> list[list[Hit]]:
    """One ``retrieve`` call, checked: one list per query, at most ``k`` hits each."""
    rows = retriever.retrieve(queries, k=k, **kw)
    if len(rows) != len(queries):
        raise ValueError(
            f"{type(retriever).__name__}.retrieve returned {len(rows)} hit lists for "
            f"{len(queries)} queries; it must return one list per query"
        )
    return [list(row)[:k] for row in rows]


def item_id_of(hit: Hit, target: str = "image") -> str:
    """The corpus item a hit points to.

    ``metadata["item_id"]`` when present; otherwise, for caption hits (``target="text"``),
    the ``"{item_id}#{j}"`` id convention of caption indexes; otherwise the hit's id.
    """
    item = hit.metadata.get("item_id")
    if item is not None:
        return str(item)
    if target == "text" and "#" in hit.id:
        return hit.id.rpartition("#")[0]
    return hit.id


def supports_text_target(retriever: Retriever) -> bool:
    """Whether ``retriever.retrieve`` takes ``target="text"`` (image -> text search).

    True when ``retrieve`` declares a ``target`` parameter (a ``**kwargs`` catch-all does
    not count: a pipeline forwards it to a first stage that may not accept it) and the
    retriever does not say it has no caption index (``text_index`` set to ``None``).
    """
    try:
        params = inspect.signature(retriever.retrieve).parameters
    except (TypeError, ValueError):
        return False
    if "target" not in params:
        return False
    return getattr(retriever, "text_index", True) is not None


class BaseEvaluator:
    """Shared parts of the evaluators (sentence-transformers' ``SentenceEvaluator``).

    Args:
        name: Prefix of the metric keys (``{name}_{metric}``); may be empty.

    Attributes:
        primary_metric: The key methods are ranked by.
        last_curves: Per-round curves of the last call (curve key -> values).
        last_notes: Remarks about the last call (e.g. a direction that was skipped).
    """

    primary_metric: str = ""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.last_curves: dict[str, list[float]] = {}
        self.last_notes: list[str] = []

    @property
    def label(self) -> str:
        """The evaluator's key in a report: ``"ClassName[name]"`` (or the class name)."""
        return type(self).__name__ + (f"[{self.name}]" if self.name else "")

    def prefix(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Prefix metric keys with ``{name}_``."""
        return prefix(metrics, self.name)

    def _note(self, text: str) -> None:
        logger.info("%s: %s", self.label, text)
        self.last_notes.append(text)

    def __call__(self, retriever: Retriever) -> dict[str, float]:
        """Evaluate ``retriever``; returns prefixed metrics (fractions in ``[0, 1]``)."""
        raise NotImplementedError


# --------------------------------------------------------------------------- retrieval
def evaluate_embeddings(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_to_image: np.ndarray | Sequence[int],
    *,
    name: str = "",
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Image-text retrieval metrics straight from dual-encoder embeddings (exact, full ranking).

    A thin, prefixed wrapper of :func:`vistrieve.evals.metrics.image_text_retrieval_metrics`.

    Args:
        image_emb: float32 ``(n_images, d)``, L2-normalised for cosine similarity.
        text_emb: float32 ``(n_texts, d)``, L2-normalised.
        text_to_image: int ``(n_texts,)``, the image row each text describes; every image
            needs at least one text.
        name: Prefix of the metric keys.
        ks: Recall cut-offs.
        chunk_size: Texts scored per block.

    Returns:
        ``{name}_text_to_image_R@{k}``, ``{name}_image_to_text_R@{k}``,
        ``{name}_text_to_image_MRR``, ``{name}_image_to_text_MRR`` and ``{name}_mean_R``.

    Example:
        >>> img = np.eye(2, dtype=np.float32)
        >>> txt = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
        >>> evaluate_embeddings(img, txt, [0, 1, 0], name="toy", ks=(1,))["toy_text_to_image_R@1"]
        0.6666666666666666
    """
    metrics = image_text_retrieval_metrics(
        image_emb, text_emb, text_to_image, ks=_check_ks(ks), chunk_size=chunk_size
    )
    return prefix(metrics, name)


class RetrievalEvaluator(BaseEvaluator):
    """Image-text retrieval, both directions, 5-caption protocol, through ``retrieve``.

    Text -> image: every caption is a query whose only positive is its item. Image -> text
    (for retrievers that accept ``target="text"``, see :func:`supports_text_target`): every
    item with an image and captions is a query, a hit when any of its captions is
    retrieved. Lists are retrieved to depth ``max(ks)``: R@K is exact, MRR is
    ``MRR@{max(ks)}``.

    Args:
        corpus: Items with images and captions.
        name: Prefix of the metric keys.
        ks: Recall cut-offs.
        batch_size: Queries per ``retrieve`` call.
        image_to_text: ``None`` evaluates image -> text when the retriever supports it
            (and notes the skip otherwise); ``True`` always tries; ``False`` never does.

    Example:
        >>> ev = RetrievalEvaluator(corpus, name="flickr30k")  # doctest: +SKIP
        >>> ev(retriever)["flickr30k_text_to_image_R@1"]  # doctest: +SKIP
        0.588
    """

    def __init__(
        self,
        corpus: Corpus,
        *,
        name: str = "",
        ks: Sequence[int] = (1, 5, 10),
        batch_size: int = 256,
        image_to_text: bool | None = None,
    ) -> None:
        super().__init__(name)
        self.corpus = Corpus(corpus)
        self.ks = _check_ks(ks)
        self.batch_size = _check_batch_size(batch_size)
        self.image_to_text = image_to_text
        self.primary_metric = prefix({"text_to_image_R@1": 0.0}, name).popitem()[0]
        texts, owners = self.corpus.caption_pairs()
        if not texts:
            raise ValueError(
                f"corpus of {len(self.corpus)} items has no captions to use as text queries"
            )
        self._texts, self._owners = texts, owners

    @property
    def depth(self) -> int:
        """Hits retrieved per query: ``max(ks)``."""
        return max(self.ks)

    def _direction(
        self, retriever: Retriever, queries: Sequence[Query], targets: Sequence[str], target: str
    ) -> dict[str, float]:
        ranks: list[np.ndarray] = []
        kw = {"target": target} if target != "image" else {}
        for s in range(0, len(queries), self.batch_size):
            rows = _retrieve(retriever, queries[s : s + self.batch_size], self.depth, **kw)
            ranked = [[item_id_of(h, target) for h in row] for row in rows]
            ranks.append(rank_of_ids(ranked, list(targets[s : s + self.batch_size])))
        r = np.concatenate(ranks)
        direction = "text_to_image" if target == "image" else "image_to_text"
        out = {f"{direction}_R@{k}": v for k, v in recall_at_k(r, self.ks).items()}
        out[f"{direction}_MRR@{self.depth}"] = mrr(r)
        return out

    def __call__(self, retriever: Retriever) -> dict[str, float]:
        """Evaluate ``retriever``; returns prefixed metrics (fractions in ``[0, 1]``)."""
        self.last_notes = []
        out = self._direction(
            retriever, [Query(text=t) for t in self._texts], self._owners, "image"
        )
        want = self.image_to_text
        if want is None:
            want = supports_text_target(retriever)
            if not want:
                self._note(
                    f"image->text not evaluated: {type(retriever).__name__} has no text target"
                )
        if want:
            items = [it for it in self.corpus.values() if it.image is not None and it.captions]
            if items:
                queries = [Query(image=it.image, id=it.id) for it in items]
                out.update(self._direction(retriever, queries, [it.id for it in items], "text"))
            else:
                self._note("image->text not evaluated: no item has both an image and captions")
        return self.prefix(out)

    def evaluate_embeddings(
        self,
        image_emb: np.ndarray,
        text_emb: np.ndarray,
        text_to_image: np.ndarray | Sequence[int],
        *,
        chunk_size: int = 1024,
    ) -> dict[str, float]:
        """Exact metrics from embeddings, with this evaluator's name and ``ks``.

        See :func:`evaluate_embeddings` (the rows need not come from :attr:`corpus`).
        """
        return evaluate_embeddings(
            image_emb, text_emb, text_to_image, name=self.name, ks=self.ks, chunk_size=chunk_size
        )

    def evaluate_encoder(self, encoder: Encoder, *, chunk_size: int = 1024) -> dict[str, float]:
        """Exact metrics for a dual encoder on :attr:`corpus`, without an index.

        Encodes the images of the items that have both an image and captions, and all of
        their captions, then calls :meth:`evaluate_embeddings`. For a
        :class:`~vistrieve.retrievers.dense.DenseRetriever` with an exact index over the same
        items, R@K equals that of calling the evaluator on the retriever.

        Args:
            encoder: Returns L2-normalised float32 embeddings.
            chunk_size: Texts scored per block.
        """
        items = [it for it in self.corpus.values() if it.image is not None and it.captions]
        if not items:
            raise ValueError("no item has both an image and captions; nothing to evaluate")
        texts = [c for it in items for c in it.captions]
        t2i = np.repeat(np.arange(len(items)), [len(it.captions) for it in items])
        image_emb = encoder.encode_image([it.image for it in items])
        text_emb = encoder.encode_text(texts)
        return self.evaluate_embeddings(image_emb, text_emb, t2i, chunk_size=chunk_size)


# --------------------------------------------------------------------------- composed
class ComposedEvaluator(BaseEvaluator):
    """Composed retrieval (CIRR / CIRCO style): R@K, R_subset@K and mAP@K.

    Queries come from ``example.query(corpus)`` (reference image + modification text). The
    reference image is dropped from every ranking before scoring (CIRR protocol), which is
    why ``max(ks) + 1`` hits are retrieved. R@K counts a hit when any target is in the top K;
    mAP@K is CIRCO's multi-target AP. R_subset@K (only when every example has
    ``subset_ids``) ranks the subset members in the order the retriever gives them, from
    lists ``subset_depth`` deep.

    Args:
        dataset: Corpus plus composed examples.
        name: Prefix of the metric keys.
        ks: Cut-offs for R@K and mAP@K.
        subset_ks: Cut-offs for R_subset@K.
        subset_depth: Hits retrieved per query when subsets exist; ``None`` = the whole
            corpus, which makes R_subset@K exact (a member missing from a shorter list
            counts as ranked last).
        batch_size: Queries per ``retrieve`` call.
    """

    def __init__(
        self,
        dataset: ComposedDataset,
        *,
        name: str = "",
        ks: Sequence[int] = (1, 5, 10, 50),
        subset_ks: Sequence[int] = (1, 2, 3),
        subset_depth: int | None = None,
        batch_size: int = 128,
    ) -> None:
        super().__init__(name)
        if not dataset.examples:
            raise ValueError(f"composed dataset {dataset.name!r} has no examples")
        self.dataset = dataset
        self.ks = _check_ks(ks)
        self.subset_ks = _check_ks(subset_ks, "subset_ks")
        self.batch_size = _check_batch_size(batch_size)
        self.has_subsets = all(ex.subset_ids for ex in dataset.examples)
        if not self.has_subsets and any(ex.subset_ids for ex in dataset.examples):
            logger.warning(
                "only some examples of %r have subset_ids; R_subset@K is not computed",
                dataset.name,
            )
        depth = max(self.ks) + 1
        if self.has_subsets:
            full = subset_depth if subset_depth is not None else len(dataset.corpus)
            if full < 1:
                raise ValueError(f"subset_depth must be positive, got {subset_depth}")
            depth = max(depth, full)
        self.depth = depth
        self.primary_metric = prefix({"R@1": 0.0}, name).popitem()[0]

    def __call__(self, retriever: Retriever) -> dict[str, float]:
        """Evaluate ``retriever`` on the composed queries."""
        self.last_notes = []
        examples = list(self.dataset.examples)
        cut = max(self.ks) + 1
        ranked: list[list[str]] = []
        in_subset: list[list[str]] = []
        for batch in _batched(examples, self.batch_size):
            queries = [ex.query(self.dataset.corpus) for ex in batch]
            for ex, row in zip(batch, _retrieve(retriever, queries, self.depth), strict=True):
                ids = [item_id_of(h) for h in row]
                ranked.append(ids[:cut])
                if self.has_subsets:
                    members = set(ex.subset_ids)
                    in_subset.append([i for i in ids if i in members])
        targets = [list(ex.target_ids) for ex in examples]
        exclude = [[ex.reference_id] for ex in examples]
        out: dict[str, float] = {}
        for k, v in cir_recall_at_k(ranked, targets, self.ks, exclude_ids=exclude).items():
            out[f"R@{k}"] = v
        if self.has_subsets:
            subsets = [list(ex.subset_ids) for ex in examples]
            sub = cir_recall_subset_at_k(
                in_subset, targets, subsets, self.subset_ks, exclude_ids=exclude
            )
            out.update({f"R_subset@{k}": v for k, v in sub.items()})
        for k, v in cir_map_at_k(ranked, targets, self.ks, exclude_ids=exclude).items():
            out[f"mAP@{k}"] = v
        return self.prefix(out)


# --------------------------------------------------------------------------- dialog
class DialogEvaluator(BaseEvaluator):
    """ChatIR dialog retrieval: cumulative Hits@K after each round 0..R.

    The round-``r`` query is ``example.query(rounds=r)``: the caption and the first ``r``
    question/answer rounds. The target's rank per round is kept in :attr:`last_ranks`; a
    dialog counts as a hit at round ``r`` once its target entered the top ``k`` at any
    round up to ``r``.

    Args:
        dataset: Corpus plus dialogs.
        name: Prefix of the metric keys.
        rounds: Last round to evaluate (default: the longest dialog's number of rounds).
        k: Cut-off of Hits@K (ChatIR uses 10).
        batch_size: Queries per ``retrieve`` call.

    Attributes:
        last_ranks: int64 ``(n_dialogs, rounds + 1)``, 0-based rank of each target per
            round in the last call (:data:`~vistrieve.evals.metrics.ABSENT_RANK` when it
            was not in the top ``k``).
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
        super().__init__(name)
        if not dataset.examples:
            raise ValueError(f"dialog dataset {dataset.name!r} has no dialogs")
        if rounds is not None and rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        self.dataset = dataset
        self.rounds = rounds if rounds is not None else max(len(e.turns) for e in dataset.examples)
        self.k = k
        self.batch_size = _check_batch_size(batch_size)
        self.curve_key = prefix({f"hits@{k}": 0.0}, name).popitem()[0]
        self.primary_metric = f"{self.curve_key}_round{self.rounds}"
        self.last_ranks = np.empty((0, self.rounds + 1), dtype=np.int64)

    @property
    def last_curve(self) -> list[float]:
        """Cumulative Hits@K per round of the last call."""
        return list(self.last_curves.get(self.curve_key, []))

    def target_ranks(self, retriever: Retriever) -> np.ndarray:
        """int64 ``(n_dialogs, rounds + 1)``: rank of each dialog's target after each round."""
        examples = list(self.dataset.examples)
        ranks = np.empty((len(examples), self.rounds + 1), dtype=np.int64)
        for r in range(self.rounds + 1):
            for s in range(0, len(examples), self.batch_size):
                batch = examples[s : s + self.batch_size]
                rows = _retrieve(retriever, [ex.query(rounds=r) for ex in batch], self.k)
                ranked = [[item_id_of(h) for h in row] for row in rows]
                ranks[s : s + len(batch), r] = rank_of_ids(ranked, [ex.target_id for ex in batch])
        return ranks

    def __call__(self, retriever: Retriever) -> dict[str, float]:
        """Evaluate ``retriever``; the curve also goes to ``last_curves``."""
        self.last_notes = []
        self.last_ranks = self.target_ranks(retriever)
        curve = [float(x) for x in cumulative_hits_at_k(self.last_ranks, self.k)]
        self.last_curves = {self.curve_key: curve}
        return self.prefix({f"hits@{self.k}_round{r}": v for r, v in enumerate(curve)})


# --------------------------------------------------------------------------- cost
def stage_objects(retriever: Any) -> list[tuple[str, Any]]:
    """Every object whose counters make up the retriever's cost, with a stage label.

    The components of the retriever's ``stages()`` (with their own labels), the retriever
    itself (labelled by its ``name`` attribute, else ``"retriever"``), and, recursively,
    whatever their :data:`FOLLOWED_ATTRIBUTES` hold (labelled ``"{parent}.{attribute}"``).
    Each object is listed once; a label already taken gets a ``#2``, ``#3`` ... suffix.

    Args:
        retriever: Any retriever.

    Returns:
        ``(label, object)`` pairs.

    Example:
        >>> [label for label, _ in stage_objects(dense_retriever)]  # doctest: +SKIP
        ['dense', 'dense.encoder']
    """
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()
    labels: set[str] = set()

    def add(label: str, obj: Any) -> None:
        if obj is None or id(obj) in seen:
            return
        seen.add(id(obj))
        # Stages claim their labels first: a wrapper named like its inner stage (a pipeline
        # "dense" around a retriever "dense") must not push the stage's label to "dense#2".
        stages = getattr(obj, "stages", None)
        if callable(stages):
            for sub_label, sub in stages():
                add(str(sub_label), sub)
        unique, n = label, 1
        while unique in labels:
            n += 1
            unique = f"{label}#{n}"
        labels.add(unique)
        found.append((unique, obj))
        for attr in FOLLOWED_ATTRIBUTES:
            add(f"{unique}.{attr}", getattr(obj, attr, None))

    name = getattr(retriever, "name", None)
    add(name if isinstance(name, str) and name else "retriever", retriever)
    return found


def _is_number(value: Any) -> TypeGuard[numbers.Real]:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def read_counters(retriever: Any) -> dict[str, float]:
    """Current cumulative counters of every stage object, keyed ``"{stage}.{counter}"``.

    Args:
        retriever: Any retriever.

    Returns:
        Counter values as floats (see the module docstring for what is read).
    """
    snap: dict[str, float] = {}
    for label, obj in stage_objects(retriever):
        counters: dict[str, float] = {}
        for attr in COUNTER_ATTRIBUTES:
            value = getattr(obj, attr, None)
            if _is_number(value):
                counters[attr] = float(value)
        if isinstance(obj, CostReporter):
            reported = obj.cost()
            if not isinstance(reported, Mapping):
                raise TypeError(
                    f"{type(obj).__name__}.cost() must return a dict of counters, "
                    f"got {type(reported).__name__}"
                )
            for key, value in reported.items():
                if not _is_number(value):
                    raise TypeError(
                        f"{type(obj).__name__}.cost()[{key!r}] must be a number, got {value!r}"
                    )
                counters[str(key)] = float(value)
        snap.update({f"{label}.{k}": v for k, v in counters.items()})
    return snap


def _cost_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def method_notes(retriever: Any) -> list[str]:
    """The ``report_notes()`` of every stage object of ``retriever``, without repeats."""
    notes: list[str] = []
    for _, obj in stage_objects(retriever):
        fn = getattr(obj, "report_notes", None)
        if callable(fn):
            notes.extend(str(n) for n in fn() if str(n) not in notes)
    return notes


# --------------------------------------------------------------------------- runner
def _labels(evaluators: Sequence[Any]) -> list[str]:
    out: list[str] = []
    for ev in evaluators:
        base = getattr(ev, "label", None)
        if not isinstance(base, str) or not base:
            name = getattr(ev, "name", "")
            base = type(ev).__name__ + (f"[{name}]" if name else "")
        label, n = base, 1
        while label in out:
            n += 1
            label = f"{base}#{n}"
        out.append(label)
    return out


def evaluate(
    methods: Mapping[str, Retriever],
    evaluators: Sequence[Evaluator],
    *,
    continue_on_error: bool = False,
    title: str = "vistrieve evaluation",
    info: Mapping[str, Any] | None = None,
) -> EvalReport:
    """Run every method on every evaluator and collect metrics, cost, time and notes.

    Args:
        methods: Method name -> retriever (the baseline and the new methods).
        evaluators: Objects following the :class:`~vistrieve.types.Evaluator` protocol.
        continue_on_error: Record a failing evaluation in the report (and log it), then go
            on with the next one; by default the error is raised, naming the method.
        title: Report title.
        info: Run description stored in the report (dataset, split, ...).

    Returns:
        The report, one :class:`~vistrieve.evals.report.MethodResult` per method.

    Raises:
        RuntimeError: when an evaluation fails and ``continue_on_error`` is False; the
            original exception is its ``__cause__``.

    Example:
        >>> report = evaluate({"dense": retriever}, [RetrievalEvaluator(corpus)])  # doctest: +SKIP
        >>> report.save("runs/eval")  # doctest: +SKIP
    """
    if not methods:
        raise ValueError("no methods to evaluate; pass {name: retriever}")
    if not evaluators:
        raise ValueError("no evaluators; pass e.g. [RetrievalEvaluator(corpus)]")
    labels = _labels(evaluators)
    report = EvalReport(title=title, info=dict(info or {}))
    for label, ev in zip(labels, evaluators, strict=True):
        report.sections[label] = Section(
            kind=type(ev).__name__,
            name=str(getattr(ev, "name", "")),
            primary_metric=str(getattr(ev, "primary_metric", "")),
        )
    for method, retriever in methods.items():
        result = MethodResult(notes=method_notes(retriever))
        for label, ev in zip(labels, evaluators, strict=True):
            before = read_counters(retriever)
            t0 = time.perf_counter()
            try:
                metrics = ev(retriever)
            except Exception as exc:
                if not continue_on_error:
                    raise RuntimeError(f"method {method!r} failed in {label}: {exc}") from exc
                logger.error("method %r failed in %s: %s", method, label, exc, exc_info=True)
                result.errors[label] = f"{type(exc).__name__}: {exc}"
                continue
            result.seconds[label] = time.perf_counter() - t0
            delta = _cost_delta(before, read_counters(retriever))
            result.cost_by_evaluator[label] = delta
            for key, value in delta.items():
                result.cost[key] = result.cost.get(key, 0.0) + value
            result.metrics.update({k: float(v) for k, v in metrics.items()})
            keys = report.sections[label].metrics
            keys.extend(k for k in metrics if k not in keys)
            result.curves.update(
                {k: [float(x) for x in v] for k, v in getattr(ev, "last_curves", {}).items()}
            )
            for text in getattr(ev, "last_notes", []):
                note = f"{label}: {text}"
                if note not in result.notes:
                    result.notes.append(note)
            primary = report.sections[label].primary_metric
            logger.info(
                "%s on %s: %s = %s (%.1fs)",
                method,
                label,
                primary,
                metrics.get(primary),
                result.seconds[label],
            )
        report.methods[method] = result
    return report


def evaluate_embedding_sets(
    sets: Mapping[str, PairedEmbeddings],
    *,
    name: str = "",
    ks: Sequence[int] = (1, 5, 10),
    title: str = "vistrieve evaluation",
    info: Mapping[str, Any] | None = None,
) -> EvalReport:
    """Report image-text retrieval of precomputed embedding sets side by side.

    Each set is one method (a dual encoder whose embeddings were computed elsewhere),
    scored with :func:`evaluate_embeddings` over the full gallery.

    Args:
        sets: Method name -> its embeddings.
        name: Prefix of the metric keys.
        ks: Recall cut-offs.
        title: Report title.
        info: Run description stored in the report.

    Returns:
        The report (no cost counters: nothing is encoded).
    """
    if not sets:
        raise ValueError("no embedding sets to evaluate")
    label = "embeddings" + (f"[{name}]" if name else "")
    section = Section(
        kind="evaluate_embeddings",
        name=name,
        primary_metric=prefix({"text_to_image_R@1": 0.0}, name).popitem()[0],
    )
    report = EvalReport(title=title, sections={label: section}, info=dict(info or {}))
    for method, emb in sets.items():
        t0 = time.perf_counter()
        metrics = evaluate_embeddings(emb.image, emb.text, emb.text_to_image, name=name, ks=ks)
        result = MethodResult(metrics=metrics, seconds={label: time.perf_counter() - t0})
        section.metrics.extend(k for k in metrics if k not in section.metrics)
        report.methods[method] = result
    return report


__all__ = [
    "COUNTER_ATTRIBUTES",
    "BaseEvaluator",
    "ComposedEvaluator",
    "CostReporter",
    "DialogEvaluator",
    "EvalReport",
    "MethodResult",
    "RetrievalEvaluator",
    "evaluate",
    "evaluate_embedding_sets",
    "evaluate_embeddings",
    "item_id_of",
    "method_notes",
    "read_counters",
    "stage_objects",
    "supports_text_target",
]
