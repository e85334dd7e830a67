"""Naive loop implementations used only to cross-check vistrieve.evals.metrics."""

from __future__ import annotations

import numpy as np


def recall_both_directions(img, txt, t2i, ks):  # type: ignore[no-untyped-def]
    sim = txt @ img.T
    out = {}
    t_hits = {k: 0 for k in ks}
    for t in range(sim.shape[0]):
        # Ties count against the query: put negatives with equal score first.
        order = sorted(range(sim.shape[1]), key=lambda j: (-sim[t, j], 0 if j != t2i[t] else 1))
        for k in ks:
            if t2i[t] in order[:k]:
                t_hits[k] += 1
    i_hits = {k: 0 for k in ks}
    for i in range(sim.shape[1]):
        col = sim[:, i]
        mine = {t for t in range(len(t2i)) if t2i[t] == i}
        order = sorted(range(len(col)), key=lambda t: (-col[t], 0 if t not in mine else 1))
        for k in ks:
            if mine & set(order[:k]):
                i_hits[k] += 1
    for k in ks:
        out[f"text_to_image_R@{k}"] = t_hits[k] / sim.shape[0]
        out[f"image_to_text_R@{k}"] = i_hits[k] / sim.shape[1]
    return out


def hashing_map(qb, db, ql, dl, top_k=None):  # type: ignore[no-untyped-def]
    total = 0.0
    bits = qb.shape[1]
    for i in range(qb.shape[0]):
        dists = []
        for j in range(db.shape[0]):
            dists.append((sum(1 for b in range(bits) if qb[i, b] != db[j, b]), j))
        dists.sort()
        k = len(dists) if top_k is None else top_k
        found = 0
        score = 0.0
        for pos, (_, j) in enumerate(dists[:k], start=1):
            if any(ql[i, c] and dl[j, c] for c in range(ql.shape[1])):
                found += 1
                score += found / pos
        total += score / found if found else 0.0
    return total / qb.shape[0]
