"""One registry per stage and one loader per saved directory: every kind reopens by itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from vistrieve.data.shapes import ShapesWorld
from vistrieve.encoders import create_encoder, parse_encoder_spec
from vistrieve.indexes import INDEXES, ExactIndex, create_index, load_index
from vistrieve.llm import LangChainLLM, create_llm
from vistrieve.query_rewriting import create_rewriter, load_captioner
from vistrieve.query_rewriting.captioner import PrefixCaptioner
from vistrieve.rerankers import load_reranker, reranker_kind
from vistrieve.rerankers.qformer import QFormerReranker, read_qformer_meta
from vistrieve.retrievers import (
    DenseRetriever,
    HashRetriever,
    load_retriever,
    retriever_kind,
)
from vistrieve.types import Query


@pytest.fixture(scope="module")
def corpus():  # type: ignore[no-untyped-def]
    return ShapesWorld(n_train=0, n_val=0, n_test=24, n_composed=0, n_dialogs=0).corpus("test")


@pytest.fixture(scope="module")
def encoder():  # type: ignore[no-untyped-def]
    return create_encoder("clip-tiny-test")


def test_parse_encoder_spec_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_encoder_spec("clip-tiny-test") == {"name": "clip-tiny-test"}
    assert parse_encoder_spec("open_clip:ViT-B-32") == {"name": "open_clip", "model": "ViT-B-32"}
    assert parse_encoder_spec("open_clip:RN50:yfcc15m")["pretrained"] == "yfcc15m"
    assert parse_encoder_spec("open_clip:hf-hub:org/repo")["model"] == "hf-hub:org/repo"
    # Relative local paths become absolute: a saved spec must not depend on the cwd.
    monkeypatch.chdir(tmp_path)
    assert parse_encoder_spec("lit:runs/lit") == {
        "name": "lit",
        "heads": str(tmp_path / "runs" / "lit"),
    }
    assert parse_encoder_spec('{"name": "clip-tiny-test", "seed": 3}') == {
        "name": "clip-tiny-test",
        "seed": 3,
    }
    with pytest.raises(KeyError, match="unknown encoder 'nope'"):
        parse_encoder_spec("nope")
    with pytest.raises(ValueError, match="takes no ':' arguments"):
        parse_encoder_spec("clip-tiny-test:1")
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_encoder_spec("{oops")


def test_create_encoder_saves_paths_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vistrieve.encoders import ENCODERS

    seen: dict[str, object] = {}

    @ENCODERS.register("path-test")
    def _factory(**kw: object) -> object:
        seen.update(kw)
        return create_encoder("clip-tiny-test")

    try:
        monkeypatch.chdir(tmp_path)
        built = create_encoder("path-test", path="weights.bin")
    finally:
        ENCODERS.unregister("path-test")
    assert seen["path"] == "weights.bin"  # the factory gets what was given
    assert built.spec["path"] == str(tmp_path / "weights.bin")  # type: ignore[attr-defined]


def test_one_index_registry_creates_and_loads(tmp_path: Path) -> None:
    assert {"exact", "faiss", "binary"} <= set(INDEXES.list())
    index = create_index("exact", 4, model="m")
    assert isinstance(index, ExactIndex)
    index.add(np.eye(4, dtype=np.float32), list("abcd"))
    index.save(tmp_path / "i")
    assert type(load_index(tmp_path / "i", expected_model="m")) is ExactIndex
    assert type(INDEXES.get("faiss").load) is type(ExactIndex.load)
    with pytest.raises(ValueError, match="takes no ':' argument"):
        create_index("binary:8", 8)


def test_load_retriever_dispatches_on_the_saved_kind(corpus, encoder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vistrieve.hashing.heads import CMSEH, CMSEHConfig

    DenseRetriever.build(encoder, corpus, directory=tmp_path / "dense")
    model = CMSEH(CMSEHConfig(image_dim=encoder.dim, text_dim=encoder.dim, bits=16, d_model=32))
    HashRetriever.build(encoder, model, corpus, directory=tmp_path / "hash")
    assert retriever_kind(tmp_path / "dense") == "dense"
    assert retriever_kind(tmp_path / "hash") == "hash"
    dense, hashed = load_retriever(tmp_path / "dense"), load_retriever(tmp_path / "hash")
    assert type(dense) is DenseRetriever and type(hashed) is HashRetriever
    q = [Query(text="a red circle")]
    assert len(dense.retrieve(q, k=3)[0]) == 3 and len(hashed.retrieve(q, k=3)[0]) == 3
    with pytest.raises(ValueError, match="holds a 'hash' retriever"):
        DenseRetriever.load(tmp_path / "hash")
    with pytest.raises(FileNotFoundError, match="not a vistrieve retriever"):
        load_retriever(tmp_path)


def test_embedded_qformer_records_its_image_tower(corpus) -> None:  # type: ignore[no-untyped-def]
    meta = read_qformer_meta("embedded")
    assert meta["kind"] == "qformer" and meta["image_tower"] == {"name": "shapes-clip"}
    assert reranker_kind("embedded") == "qformer"
    reranker = load_reranker("embedded", corpus)
    assert isinstance(reranker, QFormerReranker)
    same = load_reranker({"kind": "qformer", "path": "embedded"}, corpus, name="q")
    cands = DenseRetriever.build(create_encoder("shapes-clip"), corpus).retrieve(
        [Query(text="a red circle")], k=5
    )
    a = reranker.rerank([Query(text="a red circle")], cands)[0]
    b = same.rerank([Query(text="a red circle")], cands)[0]
    assert [h.id for h in a] == [h.id for h in b] and "q" in b[0].scores


def test_a_qformer_saved_before_towers_were_recorded_still_loads(corpus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vistrieve.rerankers.qformer import CONFIG_FILE, WEIGHTS_FILE, embedded_files

    weights, config = embedded_files()
    old = tmp_path / "old-qformer"
    old.mkdir()
    shutil.copy(weights, old / WEIGHTS_FILE)
    meta = json.loads(config.read_text())
    for key in ("image_tower", "kind", "format_version"):
        meta.pop(key)
    (old / CONFIG_FILE).write_text(json.dumps(meta))
    reranker = load_reranker(old, corpus)
    assert isinstance(reranker, QFormerReranker)
    assert reranker.image_tower == {"name": "shapes-clip"}
    reranker.save(tmp_path / "resaved")
    assert read_qformer_meta(tmp_path / "resaved")["image_tower"] == {"name": "shapes-clip"}


def test_load_reranker_errors(corpus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotFoundError, match="holds no reranker"):
        load_reranker(tmp_path, corpus)
    with pytest.raises(ValueError, match="has no 'kind'"):
        load_reranker({"path": "x"}, corpus)
    with pytest.raises(KeyError, match="unknown reranker 'qformr'; did you mean 'qformer'"):
        load_reranker({"kind": "qformr"}, corpus)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blip-2"}))
    assert reranker_kind(tmp_path) == "blip2"


def test_llm_and_rewriter_registries() -> None:
    llm = create_llm(
        {
            "name": "langchain",
            "model": "langchain_core.language_models.fake_chat_models:FakeListChatModel",
            "kwargs": {"responses": ["Description: a red circle"]},
        }
    )
    assert isinstance(llm, LangChainLLM) and llm.name.startswith("FakeListChatModel")
    assert llm.complete([{"role": "user", "content": "hi"}]) == "Description: a red circle"
    with pytest.raises(ValueError, match="import path"):
        create_llm({"name": "langchain", "model": "no_colon"})
    with pytest.raises(KeyError, match="unknown LLM backend"):
        create_llm("gpt-nope")
    ready = LangChainLLM(FakeListChatModel(responses=["x"]))
    assert create_llm(ready) is ready
    rewriter = create_rewriter({"kind": "dialog-summary", "llm": ready})
    assert type(rewriter).__name__ == "DialogSummaryRewriter"
    with pytest.raises(ValueError, match="has no 'kind'"):
        create_rewriter({"llm": ready})


def test_embedded_captioner_rebuilds_its_encoder() -> None:
    captioner = load_captioner("embedded")
    assert isinstance(captioner, PrefixCaptioner)
    assert captioner.encoder.name == "shapes-clip"
    world = ShapesWorld(n_train=0, n_val=0, n_test=4, n_composed=0, n_dialogs=0)
    caps = captioner.caption([it.image for it in world.corpus("test").values()])
    assert len(caps) == 4 and all(isinstance(c, str) and c for c in caps)
