"""Naive loop implementations of the retrieval metrics, used only to cross-check metrics.py.

Written from the metric definitions (CLIP_benchmark 5-caption recall, DCMH-style hashing mAP,
CIRCO mAP@K, ChatIR cumulative hits) with plain Python sorting and loops; shares no code
with ``vistrieve.evals.metrics``. Slow by design: use on tiny inputs only.
"""

from __future__ import annotations

from collections.abc import Sequence


def dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))


def rank_of_best_positive(scores: Sequence[float], positives: set[int]) -> int:
    """Sort descending; among equal scores negatives go first (pessimistic ties)."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j in positives))
    for position, j in enumerate(order):
        if j in positives:
            return position
    raise AssertionError("no positive")


def image_text_ranks(
    image_emb: Sequence[Sequence[float]],
    text_emb: Sequence[Sequence[float]],
    text_to_image: Sequence[int],
) -> tuple[list[int], list[int]]:
    """(rank of each text's image, rank of each image's best caption), 0-based."""
    n_img, n_txt = len(image_emb), len(text_emb)
    sim = [[dot(text_emb[t], image_emb[i]) for i in range(n_img)] for t in range(n_txt)]
    text_ranks = [rank_of_best_positive(sim[t], {int(text_to_image[t])}) for t in range(n_txt)]
    image_ranks = []
    for i in range(n_img):
        column = [sim[t][i] for t in range(n_txt)]
        captions = {t for t in range(n_txt) if int(text_to_image[t]) == i}
        image_ranks.append(rank_of_best_positive(column, captions))
    return text_ranks, image_ranks


def recall_and_mrr(
    image_emb: Sequence[Sequence[float]],
    text_emb: Sequence[Sequence[float]],
    text_to_image: Sequence[int],
    ks: Sequence[int],
) -> dict[str, float]:
    text_ranks, image_ranks = image_text_ranks(image_emb, text_emb, text_to_image)
    out: dict[str, float] = {}
    for name, ranks in (("text_to_image", text_ranks), ("image_to_text", image_ranks)):
        for k in ks:
            out[f"{name}_R@{k}"] = sum(1 for r in ranks if r < k) / len(ranks)
        out[f"{name}_MRR"] = sum(1.0 / (r + 1) for r in ranks) / len(ranks)
    return out


def hamming(a: Sequence[float], b: Sequence[float]) -> int:
    return sum(1 for x, y in zip(a, b, strict=True) if (x > 0) != (y > 0))


def average_precision(relevant_in_order: Sequence[bool], top_k: int | None, variant: str) -> float:
    """AP of one ranked relevance list; see metrics.mean_average_precision for the variants."""
    n = len(relevant_in_order)
    k = n if top_k is None else min(top_k, n)
    if variant == "hits_in_top_k":
        found, total = 0, 0.0
        for position in range(1, k + 1):
            if relevant_in_order[position - 1]:
                found += 1
                total += found / position
        return total / found if found else 0.0
    # dcmh: the first min(k, R) relevant items anywhere in the ranking
    n_relevant = sum(1 for r in relevant_in_order if r)
    wanted = min(k, n_relevant)
    found, total = 0, 0.0
    for position in range(1, n + 1):
        if found == wanted:
            break
        if relevant_in_order[position - 1]:
            found += 1
            total += found / position
    return total / wanted if wanted else 0.0


def hashing_map(
    query_codes: Sequence[Sequence[float]],
    db_codes: Sequence[Sequence[float]],
    query_labels: Sequence[Sequence[int]],
    db_labels: Sequence[Sequence[int]],
    top_k: int | None = None,
    variant: str = "hits_in_top_k",
) -> float:
    """Hamming ranking, ties by database index; relevant = at least one shared label."""
    aps = []
    for q, q_labels in zip(query_codes, query_labels, strict=True):
        keyed = [(hamming(q, d), j) for j, d in enumerate(db_codes)]
        keyed.sort()
        relevant = [
            any(a and b for a, b in zip(q_labels, db_labels[j], strict=True)) for _, j in keyed
        ]
        aps.append(average_precision(relevant, top_k, variant))
    return sum(aps) / len(aps)


def score_map(
    scores: Sequence[Sequence[float]],
    relevance: Sequence[Sequence[bool]],
    top_k: int | None = None,
    variant: str = "hits_in_top_k",
) -> float:
    """Descending scores, ties by database index."""
    aps = []
    for row, rel in zip(scores, relevance, strict=True):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        aps.append(average_precision([bool(rel[j]) for j in order], top_k, variant))
    return sum(aps) / len(aps)


def circo_map(
    ranked_ids: Sequence[Sequence[str]], target_ids: Sequence[Sequence[str]], k: int
) -> float:
    aps = []
    for ranked, targets in zip(ranked_ids, target_ids, strict=True):
        found, total = 0, 0.0
        for position, rid in enumerate(ranked[:k], start=1):
            if rid in targets:
                found += 1
                total += found / position
        aps.append(total / min(k, len(targets)))
    return sum(aps) / len(aps)


def cumulative_hits(target_ranks: Sequence[Sequence[int]], k: int) -> list[float]:
    n_rounds = len(target_ranks[0])
    out = []
    for r in range(n_rounds):
        hits = sum(1 for dialog in target_ranks if any(x < k for x in dialog[: r + 1]))
        out.append(hits / len(target_ranks))
    return out


def corpus_bleu(
    predictions: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]], n: int = 4
) -> float:
    """Papineni et al. corpus BLEU-n (uniform weights, clipped counts, brevity penalty from the
    closest reference length per sentence, shortest on ties), no smoothing."""
    import math
    from collections import Counter

    matches = [0] * n
    totals = [0] * n
    hyp_len = ref_len = 0
    for hyp, refs in zip(predictions, references, strict=True):
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
        for order in range(1, n + 1):
            grams = Counter(tuple(hyp[i : i + order]) for i in range(len(hyp) - order + 1))
            best: Counter[tuple[str, ...]] = Counter()
            for r in refs:
                rg = Counter(tuple(r[i : i + order]) for i in range(len(r) - order + 1))
                for g, c in rg.items():
                    best[g] = max(best[g], c)
            matches[order - 1] += sum(min(c, best[g]) for g, c in grams.items())
            totals[order - 1] += max(len(hyp) - order + 1, 0)
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p)
