"""GRACE generative retrieval: identifiers, trie, constrained decoding, training, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from vistrieve.generative import (  # noqa: E402
    SCHEMES,
    GraceModel,
    GraceRetriever,
    GraceTrainConfig,
    IdentifierError,
    Trie,
    build_identifiers,
    extend_identifiers,
    train_grace,
    word_tokenizer,
)
from vistrieve.generative.identifiers import semantic_text, structured_identifiers  # noqa: E402
from vistrieve.types import Corpus, Item, Query  # noqa: E402

WORDS = "a red blue green circle square triangle and small large".split()
ITEMS = [f"img{i}" for i in range(12)]
CAPTIONS = [
    f"a {c} {s}"
    for c, s in zip(
        ["red", "blue", "green"] * 4,
        ["circle"] * 3 + ["square"] * 3 + ["triangle"] * 3 + ["circle"] * 3,
        strict=True,
    )
]


def _lm(kind: str, vocab: int) -> object:
    torch.manual_seed(0)
    if kind == "t5":
        cfg = transformers.T5Config(
            vocab_size=vocab, d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1,
            num_heads=2, d_kv=16, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )  # fmt: skip
        return transformers.T5ForConditionalGeneration(cfg)
    cfg = transformers.GPT2Config(
        vocab_size=vocab, n_embd=32, n_layer=1, n_head=2, n_positions=64,
        bos_token_id=1, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg)


def _model(kind: str = "t5", image_dim: int = 8) -> GraceModel:
    tok = word_tokenizer(WORDS)
    return GraceModel(_lm(kind, len(tok)), tok, image_dim=image_dim)


def _features(dim: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {i: rng.normal(size=dim).astype(np.float32) for i in ITEMS}


# ----------------------------------------------------------------------------- identifiers
@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_is_unique_and_deterministic(scheme: str) -> None:
    emb = np.random.default_rng(1).normal(size=(len(ITEMS), 4))
    kw = {"captions": CAPTIONS, "embeddings": emb}
    a = build_identifiers(scheme, ITEMS, **kw)  # type: ignore[arg-type]
    b = build_identifiers(scheme, ITEMS, **kw)  # type: ignore[arg-type]
    assert a.by_item == b.by_item
    assert len(set(a.by_item.values())) == len(ITEMS)
    assert all(a.item_of(a[i]) == i for i in ITEMS)
    assert type(a).from_dict(a.to_dict()).by_item == a.by_item


def test_duplicate_image_ids_are_an_error() -> None:
    with pytest.raises(IdentifierError, match="duplicate image ids"):
        build_identifiers("numeric", ["x", "y", "x"])


def test_semantic_collisions_get_deterministic_suffixes() -> None:
    ids = build_identifiers("semantic", ["a", "b", "c"], captions=["A red circle."] * 2 + ["x"])
    assert ids.by_item == {"a": "red circle", "b": "red circle 2", "c": "x"}
    assert semantic_text("There is a small red circle and a blue square") == (
        "small red circle blue square"
    )


def test_structured_identifiers_share_prefixes_within_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0]])
    emb = np.concatenate([c + rng.normal(scale=0.1, size=(5, 2)) for c in centres])
    ids = structured_identifiers([f"i{n}" for n in range(15)], emb, branching=3, leaf_size=5)
    first = [ids[f"i{n}"].split()[0] for n in range(15)]
    assert len({first[n] for n in range(0, 5)}) == 1
    assert len({first[0], first[5], first[10]}) == 3
    assert all(len(ids[f"i{n}"].split()) == 2 for n in range(15))


def test_schemes_need_their_inputs() -> None:
    with pytest.raises(IdentifierError, match="captions"):
        build_identifiers("semantic", ITEMS)
    with pytest.raises(IdentifierError, match="embeddings"):
        build_identifiers("structured", ITEMS)
    with pytest.raises(IdentifierError, match="unknown identifier scheme"):
        build_identifiers("hash", ITEMS)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_extending_identifiers_keeps_old_and_adds_unique_new(scheme: str) -> None:
    emb = np.random.default_rng(1).normal(size=(len(ITEMS), 4))
    ids = build_identifiers(scheme, ITEMS, captions=CAPTIONS, embeddings=emb)
    new = ["new0", "new1"]
    new_emb = np.concatenate([emb[:2] + 0.01, emb])
    ext = extend_identifiers(ids, new, captions=CAPTIONS[:2], embeddings=new_emb)
    assert {i: ext[i] for i in ITEMS} == ids.by_item
    assert len(set(ext.by_item.values())) == len(ITEMS) + 2
    with pytest.raises(IdentifierError, match="already have identifiers"):
        extend_identifiers(ext, ["new0"], captions=["x"], embeddings=new_emb)


# ----------------------------------------------------------------------------- trie
def test_trie_allows_only_valid_continuations_and_eos_when_stuck() -> None:
    trie = Trie.build([([5, 6, 1], "a"), ([5, 7, 1], "b"), ([8, 1], "c")], eos_token_id=1)
    assert trie.allowed([]) == [5, 8]
    assert trie.allowed([5]) == [6, 7]
    assert trie.allowed([5, 6]) == [1]
    assert trie.allowed([5, 6, 1]) == [1]  # finished: only EOS, never an empty list
    assert trie.allowed([9]) == [1]  # off the trie: EOS, never an empty list
    assert trie.next_tokens([9]) == []
    assert trie.get([5, 7, 1]) == "b" and [8, 1] in trie and [8] not in trie
    assert trie.depth == 3 and len(trie) == 3
    fn = trie.prefix_allowed_tokens_fn(skip=1)
    assert fn(0, torch.tensor([0, 5])) == [6, 7]
    with pytest.raises(ValueError, match="already in the trie"):
        trie.add([8, 1], "d")
    with pytest.raises(ValueError, match="empty"):
        trie.add([], "e")
    with pytest.raises(KeyError):
        trie.get([5])


# ----------------------------------------------------------------------------- model
def test_identifiers_that_do_not_fit_the_tokenizer_are_an_error() -> None:
    model = _model()
    ids = build_identifiers("string", ITEMS)  # "qkd": one unknown word for a word vocabulary
    with pytest.raises(IdentifierError, match="does not fit the tokenizer"):
        model.identifier_tokens(ids)
    spaced = type(ids)("string", {i: " ".join(v) for i, v in ids.by_item.items()})
    assert len(model.identifier_tokens(spaced)) == len(ITEMS)


def test_atomic_identifiers_add_tokens_and_embedding_rows() -> None:
    model = _model()
    ids = build_identifiers("atomic", ITEMS)
    with pytest.raises(IdentifierError, match="add_identifier_tokens"):
        model.identifier_tokens(ids)
    before = model.lm.get_input_embeddings().num_embeddings
    assert model.add_identifier_tokens(ids) == len(ITEMS)
    assert model.lm.get_input_embeddings().num_embeddings >= before + len(ITEMS)
    assert all(len(s) == 2 for s in model.identifier_tokens(ids).values())  # token + EOS


@pytest.mark.parametrize("kind", ["t5", "gpt2"])
def test_training_lowers_the_loss_and_decoding_returns_only_valid_ids(kind: str) -> None:
    model = _model(kind)
    ids = build_identifiers("numeric", ITEMS)
    queries = [(c, i) for c, i in zip(CAPTIONS, ITEMS, strict=True)]
    cfg = GraceTrainConfig(
        memorise_steps=60, retrieve_steps=60, batch_size=16, lr=3e-3, checkpoint_every=0
    )
    rec = train_grace(model, ids, _features(), queries, cfg, progress=False)
    mem, ret = rec["losses"]["memorise"], rec["losses"]["retrieve"]
    assert np.mean(mem[-10:]) < 0.5 * np.mean(mem[:5])
    assert np.mean(ret[-10:]) < np.mean(mem[:5])
    retriever = GraceRetriever(model, ids, num_beams=6)
    hits = retriever.retrieve([Query(text=c) for c in CAPTIONS], k=6)
    for hs in hits:
        assert 1 <= len(hs) <= 6
        assert len({h.id for h in hs}) == len(hs)
        assert all(h.id in ids and h.metadata["identifier"] == ids[h.id] for h in hs)
        assert [h.score for h in hs] == sorted((h.score for h in hs), reverse=True)
        assert all(h.scores["grace"] == h.score for h in hs)
    assert retriever.cost() == {"generations": 12.0, "beams": 6.0}


def test_untrained_model_still_decodes_only_identifiers() -> None:
    model = _model("gpt2")
    ids = build_identifiers("semantic", ITEMS, captions=CAPTIONS)
    hits = GraceRetriever(model, ids, num_beams=12).retrieve([Query(text="a red circle")], k=12)
    assert {h.id for h in hits[0]} <= set(ITEMS) and len(hits[0]) >= 1


def test_k_beyond_beams_and_composed_queries_are_errors() -> None:
    model = _model()
    retriever = GraceRetriever(model, build_identifiers("numeric", ITEMS), num_beams=3)
    with pytest.raises(ValueError, match="exceeds num_beams=3"):
        retriever.retrieve([Query(text="a red circle")], k=5)
    with pytest.raises(ValueError, match="rewrite composed queries"):
        retriever.retrieve([Query(image=np.zeros((4, 4, 3), np.uint8), text="make it blue")], k=2)
    with pytest.raises(ValueError, match="image encoder"):
        retriever.retrieve([Query(image=np.zeros((4, 4, 3), np.uint8))], k=2)


class _FeatureEncoder:
    """Image 'encoder' that reads the feature vector stored in the image's first pixel row."""

    def __init__(self, feats: dict[str, np.ndarray]) -> None:
        self.feats = feats

    def encode_image(self, images: list[object]) -> np.ndarray:
        return np.stack([self.feats[str(im.info["id"])] for im in images])  # type: ignore[attr-defined]


def _image(item: str) -> object:
    from PIL import Image

    im = Image.new("RGB", (4, 4))
    im.info["id"] = item
    return im


def test_image_queries_and_save_load_round_trip(tmp_path: Path) -> None:
    feats = _features()
    model = _model()
    ids = build_identifiers("structured", ITEMS, embeddings=np.stack(list(feats.values())))
    cfg = GraceTrainConfig(memorise_steps=150, retrieve_steps=0, batch_size=12, lr=3e-3)
    train_grace(model, ids, feats, [], cfg, progress=False)
    enc = _FeatureEncoder(feats)
    retriever = GraceRetriever(model, ids, num_beams=4, encoder=enc)
    retriever.set_feature_bank(feats)
    queries = [Query(image=_image(i)) for i in ITEMS]
    hits = retriever.retrieve(queries, k=4)
    assert np.mean([hs[0].id == i for hs, i in zip(hits, ITEMS, strict=True)]) >= 0.75
    retriever.save(tmp_path / "grace")
    loaded = GraceRetriever.load(tmp_path / "grace", encoder=enc, num_beams=4)
    again = loaded.retrieve(queries, k=4)
    assert [[h.id for h in hs] for hs in again] == [[h.id for h in hs] for hs in hits]
    assert np.allclose([h.score for hs in again for h in hs], [h.score for hs in hits for h in hs])
    assert loaded.identifiers.by_item == ids.by_item
    # The directory says what it is: the generic loader reopens it, also without the record
    # that directories saved before kinds were recorded lack.
    from vistrieve.retrievers import load_retriever, retriever_kind

    assert retriever_kind(tmp_path / "grace") == "grace"
    generic = load_retriever(tmp_path / "grace", encoder=enc)
    assert isinstance(generic, GraceRetriever) and generic.num_beams == 4
    (tmp_path / "grace" / "retriever.json").unlink()
    assert retriever_kind(tmp_path / "grace") == "grace"
    assert (
        load_retriever(tmp_path / "grace", encoder=enc, num_beams=4)
        .retrieve(queries[:1], k=4)[0][0]
        .id
        == hits[0][0].id
    )


def test_images_can_be_added_later(tmp_path: Path) -> None:
    feats = _features()
    model = _model()
    ids = build_identifiers("atomic", ITEMS)
    model.add_identifier_tokens(ids)
    train_grace(
        model, ids, feats, [], GraceTrainConfig(memorise_steps=100, retrieve_steps=0,
                                                batch_size=12, lr=3e-3), progress=False,
    )  # fmt: skip
    rng = np.random.default_rng(7)
    new_feats = {f"late{n}": rng.normal(size=8).astype(np.float32) for n in range(2)}
    enc = _FeatureEncoder({**feats, **new_feats})
    retriever = GraceRetriever(model, ids, num_beams=4, encoder=enc)
    retriever.set_feature_bank(feats)
    new = {i: Item(id=i, image=_image(i), captions=("a red circle",)) for i in new_feats}
    ext = retriever.add(
        new, config=GraceTrainConfig(memorise_steps=150, retrieve_steps=0, batch_size=14,
                                     lr=3e-3), progress=False,
    )  # fmt: skip
    assert set(ext.by_item) == {*ITEMS, *new_feats} and len(retriever) == 14
    hits = retriever.retrieve([Query(image=_image(i)) for i in new_feats], k=4)
    assert [hs[0].id for hs in hits] == ["late0", "late1"]


def test_resume_continues_and_refuses_other_settings(tmp_path: Path) -> None:
    ids = build_identifiers("numeric", ITEMS)
    cfg = GraceTrainConfig(memorise_steps=20, retrieve_steps=0, batch_size=8, checkpoint_every=10)
    full = train_grace(_model(), ids, _features(), [], cfg, progress=False, out=tmp_path / "a")
    model = _model()
    train_grace(
        model, ids, _features(), [],
        GraceTrainConfig(memorise_steps=20, retrieve_steps=0, batch_size=8, checkpoint_every=10),
        progress=False, out=tmp_path / "b",
    )  # fmt: skip
    resumed = train_grace(
        _model(), ids, _features(), [], cfg, progress=False, out=tmp_path / "b", resume=True
    )
    assert resumed["resumed_from"] == 20 and len(full["losses"]["memorise"]) == 20
    other = GraceTrainConfig(memorise_steps=30, retrieve_steps=0, batch_size=8)
    with pytest.raises(ValueError, match="other settings"):
        train_grace(_model(), ids, _features(), [], other, out=tmp_path / "b", resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_grace(_model(), ids, _features(), [], cfg, out=tmp_path / "c", resume=True)


def test_grace_retriever_runs_through_the_evaluation_runner() -> None:
    from vistrieve.evals.runner import RetrievalEvaluator, evaluate

    feats = _features()
    model = _model()
    ids = build_identifiers("numeric", ITEMS)
    queries = [(c, i) for c, i in zip(CAPTIONS, ITEMS, strict=True)]
    train_grace(
        model, ids, feats, queries,
        GraceTrainConfig(memorise_steps=50, retrieve_steps=250, batch_size=12, lr=3e-3),
        progress=False,
    )  # fmt: skip
    corpus = {i: Item(id=i, image=_image(i), captions=(c,)) for c, i in queries}
    report = evaluate(
        {"grace": GraceRetriever(model, ids, num_beams=10)},
        [RetrievalEvaluator(Corpus(list(corpus.values())), image_to_text=False)],
    )
    metrics = report.methods["grace"].metrics
    assert report.methods["grace"].cost["grace.generations"] == 12.0
    assert any("R@K is defined only for K <= 10" in n for n in report.methods["grace"].notes)
    assert metrics["text_to_image_R@10"] >= metrics["text_to_image_R@1"] > 0.5


def test_lora_trains_adapters_only_and_saves_merged(tmp_path: Path) -> None:
    model = _model("t5")
    total = sum(p.numel() for p in model.parameters())
    trainable = model.apply_lora(r=4, alpha=8)
    assert model.is_lora and 0 < trainable < total // 2
    ids = build_identifiers("numeric", ITEMS)
    base = {k: v.clone() for k, v in model.lm.state_dict().items() if "lora" not in k}
    rec = train_grace(
        model, ids, _features(), [],
        GraceTrainConfig(memorise_steps=80, retrieve_steps=0, batch_size=12, lr=5e-3),
        progress=False,
    )  # fmt: skip
    mem = rec["losses"]["memorise"]
    assert np.mean(mem[-10:]) < np.mean(mem[:5]) and rec["trainable_parameters"] == trainable
    after = {k: v for k, v in model.lm.state_dict().items() if "lora" not in k}
    assert all(torch.equal(base[k], after[k]) for k in base)  # base weights frozen
    feats = _features()
    retriever = GraceRetriever(model, ids, num_beams=4, encoder=_FeatureEncoder(feats))
    queries = [Query(image=_image(i)) for i in ITEMS[:4]]
    hits = retriever.retrieve(queries, k=4)
    retriever.save(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()
    loaded = GraceRetriever.load(tmp_path / "lora", encoder=_FeatureEncoder(feats), num_beams=4)
    again = loaded.retrieve(queries, k=4)
    assert [[h.id for h in hs] for hs in again] == [[h.id for h in hs] for hs in hits]
    assert np.allclose(
        [h.score for hs in again for h in hs], [h.score for hs in hits for h in hs], atol=1e-4
    )


def test_lora_bad_target_modules_and_rank_are_errors() -> None:
    with pytest.raises(ValueError, match="matches no adaptable layer.*end in"):
        _model("t5").apply_lora(target_modules=["query_proj"])
    with pytest.raises(ValueError, match="exceeds"):
        _model("t5").apply_lora(r=64, target_modules=["q"])


def test_vistrieve_train_grace_command(tmp_path: Path) -> None:
    from vistrieve.cli import main

    out = tmp_path / "grace"
    code = main(
        ["train", "grace", "--scheme", "structured", "--n-images", "24", "--memorise-steps",
         "10", "--retrieve-steps", "10", "--batch-size", "8", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    import json

    result = json.loads((out / "result.json").read_text())
    assert result["images"] == 24 and result["num_beams"] == 10
    assert 0.0 <= result["metrics"]["shapes-test_text_to_image_R@1"] <= 1.0
    assert (out / "model" / "identifiers.json").is_file()
    code = main(["eval", "--dataset", "shapes", "--shapes-n", "16", "--grace", str(out / "model"),
                 "--out", str(tmp_path / "eval")])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert any(name.startswith("grace:") for name in report["methods"])
    assert main(["train", "grace", "--scheme", "structured", "--beams", "0", "--n-images",
                 "8", "--out", str(tmp_path / "bad")]) == 2  # fmt: skip


def test_spaced_string_identifiers_stay_spaced_when_extended() -> None:
    ids = build_identifiers("string", ITEMS, sep=" ")
    assert all(v.count(" ") == ids.params["length"] - 1 for v in ids.by_item.values())
    ext = extend_identifiers(ids, ["late"])
    assert ext["late"].count(" ") == ids.params["length"] - 1
    model = _model()
    assert len(model.identifier_tokens(ext)) == len(ITEMS) + 1  # spellable word by word
