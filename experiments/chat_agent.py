"""The candidate-grounded chat agent on the shapes world and on real photos (Flickr8k).

Usage::

    python experiments/chat_agent.py shapes --split test --out runs/chat-agent-shapes
    python experiments/chat_agent.py flickr8k --data ../shared/data/flickr8k-1k \\
        --encoder lit:runs/lit --out runs/chat-agent-flickr8k

Each configuration (questioner x reformulator x scoring) runs live dialogs against the
simulated user (shapes: the scene graph; Flickr8k: :class:`CaptionUser` over the target's
human captions) and writes ``summary.md`` (cumulative Hits@10 per round, mean rank, BRI,
share of rounds whose rank got worse), ``results.json`` and example dialogs.

Flickr8k protocol: the test split of ``split_by_image`` (200 images, seed 0). Of each
image's five human captions, the first three are the user's (the opening query is one of
them, chosen with the seed) and the last two are the gallery's evidence, standing in for a
captioner: the agent never reads the captions the user answers from. With ``--captioner``
the evidence is a real captioner's output instead (a photo folder without captions): the
five best descriptions of each image by a retrieval captioner banked on the train split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vistrieve.cli.train import comma_floats
from vistrieve.encoders import create_encoder, parse_encoder_spec
from vistrieve.evals.dialog import (
    AgentDialogResult,
    CachedUser,
    CaptionUser,
    dialog_table,
    run_agent_dialogs,
)
from vistrieve.query_rewriting.chat import FALLBACK_QUESTIONS
from vistrieve.query_rewriting.dialog_agent import (
    CandidateEvidence,
    CandidateQuestioner,
    CaptionWords,
    ConcatReformulator,
    DialogAgent,
    RuleReformulator,
)
from vistrieve.retrievers.dense import DenseRetriever


class FixedQuestions:
    """The generic question list, in order (the baseline questioner)."""

    name = "generic"

    def __call__(self, caption: str, turns: Any, ranking: Any) -> str:
        return FALLBACK_QUESTIONS[len(turns) % len(FALLBACK_QUESTIONS)]


def _configs(args: argparse.Namespace, vocab: Any, evidence: CandidateEvidence) -> dict[str, Any]:
    q = CandidateQuestioner(evidence, k=args.k_candidates, temperature=args.temperature)
    rules = RuleReformulator(vocab)
    concat = ConcatReformulator()
    configs: dict[str, Any] = {
        "generic questions, concatenation, last round only (ChatIR baseline)": dict(
            questioner=FixedQuestions(),
            reformulator=concat,
            accumulate=False,
            confirm_weight=0.0,
            deny_weight=0.0,
        ),
        "candidate questions, concatenation, last round only": dict(
            questioner=q,
            reformulator=concat,
            accumulate=False,
            confirm_weight=0.0,
            deny_weight=0.0,
        ),
        "candidate questions, rules, last round only": dict(
            questioner=q,
            reformulator=rules,
            accumulate=False,
            confirm_weight=0.0,
            deny_weight=0.0,
        ),
        "candidate questions, rules, accumulated": dict(
            questioner=q,
            reformulator=rules,
            accumulate=True,
            confirm_weight=0.0,
            deny_weight=0.0,
        ),
    }
    for c in args.confirm:
        for d in args.deny:
            label = "candidate questions, rules, accumulated + answer consistency"
            if len(args.confirm) * len(args.deny) > 1:
                label += f" (confirm {c:g}, deny {d:g})"
            configs[label] = dict(
                questioner=q,
                reformulator=rules,
                accumulate=True,
                confirm_weight=c,
                deny_weight=d,
            )
    if args.llm is not None:
        from vistrieve.llm import CachedLLM, ReplayCache, load_smollm2
        from vistrieve.query_rewriting.dialog_agent import LLMCandidateQuestioner

        cache = ReplayCache(Path(args.llm_cache)) if args.llm_cache else None
        llm = CachedLLM(load_smollm2(args.llm or None, max_new_tokens=32), cache)
        configs["SmolLM2-135M candidate questions, rules, accumulated + answer consistency"] = dict(
            questioner=LLMCandidateQuestioner(llm, q),
            reformulator=rules,
            accumulate=True,
            confirm_weight=args.confirm[0],
            deny_weight=args.deny[0],
        )
    return configs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("world", choices=["shapes", "flickr8k"])
    p.add_argument("--data", default="../shared/data/flickr8k-1k")
    p.add_argument("--encoder", default=None, help="default: shapes-clip / lit:runs/lit")
    p.add_argument("--split", default="test")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--limit", type=int, default=200, help="dialogs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k-candidates", type=int, default=50)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument(
        "--confirm", type=comma_floats, default=None, help="comma-separated: one row per value"
    )
    p.add_argument(
        "--deny", type=comma_floats, default=None, help="comma-separated: one row per value"
    )
    p.add_argument("--only", action="append", help="run configurations containing this text")
    p.add_argument(
        "--llm",
        nargs="?",
        const="",
        default=None,
        help="add the SmolLM2 questioner (optional value: its directory; default the fetched one)",
    )
    p.add_argument("--llm-cache", default=None, help="replay cache of the LLM's answers")
    p.add_argument(
        "--captioner",
        help="flickr8k: the gallery's evidence is this captioner's five descriptions of each "
        "image (`vistrieve train photo-captioner`, banked on the train split) instead of "
        "the image's last two human captions",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args()

    if args.world == "shapes":
        from vistrieve.data.shapes import ShapesWorld
        from vistrieve.recipes.shapes.dialog import SceneUser, ShapesAttributes

        world = ShapesWorld(seed=args.seed)
        data = world.dialogs(args.split)
        examples = list(data.examples)[: args.limit]
        corpus = data.corpus
        captions = [e.caption for e in examples]
        targets = [e.target_id for e in examples]
        user: Any = SceneUser(world)
        vocab: Any = ShapesAttributes()
        texts_of = lambda i: corpus[i].captions  # noqa: E731
        spec = args.encoder or "shapes-clip"
        args.confirm = [2.0] if args.confirm is None else args.confirm
        args.deny = [2.0] if args.deny is None else args.deny
    else:
        from vistrieve.evals.datasets import load_flickr8k, split_by_image

        train, test = split_by_image(load_flickr8k(args.data), 800, seed=0)
        corpus = test if args.split == "test" else train
        rng = np.random.default_rng(args.seed)
        ids = sorted(corpus)[: args.limit]
        targets = ids
        captions = [corpus[i].captions[int(rng.integers(3))] for i in ids]
        user = CaptionUser({i: corpus[i].captions[:3] for i in corpus})
        vocab = CaptionWords()
        texts_of = lambda i: corpus[i].captions[3:]  # noqa: E731
        if args.captioner:
            from vistrieve.query_rewriting import load_captioner

            gallery = sorted(corpus)
            captioner = load_captioner(args.captioner)
            images = [corpus[i].image for i in gallery]
            if args.split == "train":
                # The bank holds these images' own captions: describe each without them.
                from vistrieve.utils.images import load_image

                if len(captioner.image_of) != sum(len(train[i].captions) for i in train.ids):
                    raise SystemExit(f"{args.captioner} was not banked on this train split")
                row = {i: r for r, i in enumerate(train.ids)}
                feats = np.asarray(captioner.encoder.encode_image([load_image(x) for x in images]))
                descriptions = captioner.describe_features(
                    feats, n=5, exclude=[row[i] for i in gallery]
                )
            else:
                descriptions = captioner.describe(images)
            described = dict(zip(gallery, descriptions, strict=True))
            texts_of = lambda i: described.get(i, ())  # noqa: E731
        spec = args.encoder or "lit:runs/lit"
        # 2.0 / 2.0 chosen on the train split (200 dialogs over its 800 images) with
        # bridge-lite1, among confirm, deny in {1, 2, 3, 4} and temperature in {0.5, 1}.
        args.confirm = [2.0] if args.confirm is None else args.confirm
        args.deny = [2.0] if args.deny is None else args.deny
    out = Path(args.out or f"runs/chat-agent-{args.world}-{args.split}")
    out.mkdir(parents=True, exist_ok=True)
    cached = CachedUser(user, out / "answers.json")
    parsed = parse_encoder_spec(spec)
    retriever = DenseRetriever.build(
        create_encoder(str(parsed.pop("name")), progress=False, **parsed), corpus
    )
    evidence = CandidateEvidence(vocab, texts_of)
    results: dict[str, AgentDialogResult] = {}
    notes: list[str] = []
    for name, cfg in _configs(args, vocab, evidence).items():
        if args.only and not any(o in name for o in args.only):
            continue
        agent = DialogAgent(retriever, evidence=evidence, pool=len(corpus), **cfg)
        results[name] = run_agent_dialogs(
            agent,
            captions,
            targets,
            cached,
            rounds=args.rounds,
            n_gallery=len(corpus),
            progress=False,
        )
        sys.stdout.write(dialog_table({name: results[name]}))
        asker = cfg["questioner"]
        if hasattr(asker, "fallbacks"):
            asked = sum(len(d) for d in results[name].dialogs)
            notes.append(
                f"{name}: the LLM's own question was used in {asked - asker.fallbacks} of "
                f"{asked} rounds (otherwise the top candidate question)."
            )
    cached.save()
    title = (
        f"{args.world} {args.split}: {len(captions)} dialogs, {len(corpus)} images, "
        f"{args.rounds} rounds, encoder {spec}, user {user.name}, evidence "
        f"{'captioner ' + Path(args.captioner).name if args.captioner else 'human captions'}; "
        f"k_candidates {args.k_candidates}, temperature {args.temperature}, "
        f"confirm {','.join(f'{c:g}' for c in args.confirm)}, "
        f"deny {','.join(f'{d:g}' for d in args.deny)}"
    )
    table = dialog_table(results, title=title)
    if notes:
        table += "\n" + "\n".join(notes) + "\n"
    (out / "summary.md").write_text(table, encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps({n: r.metrics() | {"seconds": r.seconds} for n, r in results.items()}, indent=2),
        encoding="utf-8",
    )
    examples_out = {
        n: [
            {
                "caption": captions[i],
                "target": targets[i],
                "ranks": r.ranks[i].tolist(),
                "turns": [[t.question, t.answer] for t in r.dialogs[i]],
                "queries": r.queries[i],
            }
            for i in range(min(10, len(captions)))
        ]
        for n, r in results.items()
    }
    (out / "dialogs.json").write_text(json.dumps(examples_out, indent=2), encoding="utf-8")
    sys.stdout.write("\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
