from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vistrieve.cli import main
from vistrieve.encoders import create_encoder
from vistrieve.encoders.embedded import load_compact_clip, save_compact_clip


def test_compact_save_load_round_trip(tmp_path: Path) -> None:
    enc = create_encoder("clip-tiny-test", seed=5)
    texts = ["a red circle", "two shapes: a blue star and a red square"]
    used = sorted({int(t) for row in enc.tokenizer(texts) for t in row.tolist()})  # type: ignore[attr-defined]
    path = tmp_path / "tiny.safetensors"
    save_compact_clip(
        enc.model,
        path,
        arch="vistrieve-tiny-test",
        used_token_ids=used,  # type: ignore[attr-defined]
        meta={"note": "test"},
    )
    model, preprocess, tokenizer, sidecar = load_compact_clip(path)
    assert sidecar == {"arch": "vistrieve-tiny-test", "note": "test"}
    from vistrieve.encoders.open_clip import OpenClipEncoder

    again = OpenClipEncoder(model, preprocess, tokenizer, name="again")
    # float16 storage: equal to about 1e-3; only the kept token rows survive.
    np.testing.assert_allclose(again.encode_text(texts), enc.encode_text(texts), atol=5e-3)
    rows = model.token_embedding.weight.detach()
    unused = [i for i in range(rows.shape[0]) if i not in set(used)][:50]
    assert float(rows[unused].abs().max()) == 0.0
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_compact_clip(path)


def test_embedded_model_ships_and_separates_captions() -> None:
    enc = create_encoder("shapes-clip", progress=False)
    assert enc.dim == 128 and enc.name == "shapes-clip"
    from vistrieve.data.shapes import ShapesWorld

    corpus = ShapesWorld(seed=0, n_train=0, n_val=0, n_test=40, n_composed=0).corpus("test")
    items = list(corpus.values())
    img = enc.encode_image([it.image for it in items])
    txt = enc.encode_text([it.captions[0] for it in items])
    # A trained model: each caption's own image is among its top 5 far more often than
    # chance (5 / 40).
    top5 = np.argsort(-(txt @ img.T), axis=1)[:, :5]
    hits = np.mean([i in row for i, row in enumerate(top5)])
    assert hits > 0.6


def test_demo_runs_offline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--n-test", "60"]) == 0
    out = capsys.readouterr().out
    for section in ("text -> image", "image -> image", "composed", "reranking", "R@1", "R@10"):
        assert section in out
    assert "== chat" in out and "BRI" in out and "  ->  target rank" in out
    assert 'agent: "is there' in out  # a grounded yes/no question


def test_demo_llm_sections_with_a_fake_llm(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    import vistrieve.llm as llm_mod

    answers = ["Edited Description: a small green triangle"]
    fake = llm_mod.LangChainLLM(FakeListChatModel(responses=answers), name="fake-llm")
    monkeypatch.setattr(llm_mod, "find_smollm2", lambda *a, **k: "unused")
    monkeypatch.setattr(llm_mod, "load_smollm2", lambda *a, **k: fake)
    assert main(["demo", "--n-test", "60"]) == 0
    out = capsys.readouterr().out
    assert 'CIReVL: caption "' in out and '-> "a small green triangle"' in out
    assert "what colour is it?" not in out  # the chat agent needs no LLM


def test_demo_says_how_to_get_the_llm_when_absent(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import vistrieve.llm as llm_mod

    def missing(*a: object, **k: object) -> None:
        raise FileNotFoundError("SmolLM2 not found; fetch it with ...")

    monkeypatch.setattr(llm_mod, "find_smollm2", missing)
    assert main(["demo", "--n-test", "60"]) == 0
    assert "LLM sections skipped: SmolLM2 not found" in capsys.readouterr().out


def test_loading_smollm2_without_gguf_says_how_to_install_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib.util

    import vistrieve.llm as llm_mod
    from vistrieve.errors import MissingDependencyError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    with pytest.raises(MissingDependencyError, match=r"gguf.*pip install 'vistrieve\[llm\]'"):
        llm_mod.load_smollm2(tmp_path)
    # the demo goes on without its LLM sections, and says why
    monkeypatch.setattr(llm_mod, "find_smollm2", lambda *a, **k: tmp_path)
    assert main(["demo", "--n-test", "60"]) == 0
    assert "LLM sections skipped: loading SmolLM2" in capsys.readouterr().out


def test_demo_rerank_section_shows_a_correction_and_the_measured_effect() -> None:
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.demo import _rerank_section
    from vistrieve.encoders import create_encoder
    from vistrieve.retrievers.dense import DenseRetriever

    corpus = ShapesWorld(seed=0, n_train=0, n_val=0, n_test=80).corpus("test")
    retriever = DenseRetriever.build(create_encoder("shapes-clip", progress=False), corpus)
    lines: list[str] = []
    _rerank_section(lines.append, corpus, retriever)
    text = "\n".join(lines)
    assert "Q-Former (ITM + caption likelihood)" in text and "pairs scored" in text
    corrected = int(text.split("corrected ")[1].split(",")[0])
    broke = int(text.split("broke ")[1].split(")")[0])
    assert ("first stage:" in text) == (corrected > 0)  # an example only when one exists
    # The shipped reranker helps: it fixes more first-stage misses than it breaks hits.
    before, after = (float(x) for x in text.split("R@1 ")[1].split(" (")[0].split(" -> "))
    assert corrected > broke and after > before
