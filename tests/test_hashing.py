"""Tests of the CMSEH hash heads, VTFN, losses, training loop and the hash retriever."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
import torch

from vistrieve.hashing.heads import (
    CMSEH,
    VTFN,
    CMSEHConfig,
    LinearHashHead,
    SelectHashHead,
    binarize,
    check_bits,
    pack_codes,
)
from vistrieve.hashing.losses import (
    CMSEHLoss,
    HashLossConfig,
    ProxyLoss,
    bit_balance_loss,
    contrastive_loss,
    dcmh_nll,
    label_similarity,
    quantization_loss,
)
from vistrieve.training.hashing import (
    HashTrainConfig,
    build_cmseh,
    evaluate_map,
    evaluate_pairs,
    fit_cmseh,
    train_cmseh,
)

SMALL: dict[str, Any] = {"d_model": 16, "fusion_heads": 2, "fusion_layers": 1}


def _toy(n: int = 96, n_classes: int = 4, dim_i: int = 12, dim_t: int = 8, seed: int = 0):
    """Class-structured paired features: each modality = a class prototype plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    pi = rng.standard_normal((n_classes, dim_i))
    pt = rng.standard_normal((n_classes, dim_t))
    img = (pi[y] + 0.3 * rng.standard_normal((n, dim_i))).astype(np.float32)
    txt = (pt[y] + 0.3 * rng.standard_normal((n, dim_t))).astype(np.float32)
    labels = np.eye(n_classes, dtype=np.uint8)[y]
    return img, txt, labels


@pytest.fixture(scope="module")
def toy_model() -> CMSEH:
    img, txt, _ = _toy()
    model = build_cmseh(CMSEHConfig(image_dim=12, text_dim=8, bits=16, **SMALL), seed=0)
    model.fit_input_stats(img, txt)
    return model.eval()


# ---------------------------------------------------------------------------- bits / heads
@pytest.mark.parametrize("bits", [16, 32, 64, 128, 8, 24])
def test_check_bits_accepts_multiples_of_8(bits: int) -> None:
    assert check_bits(bits) == bits


@pytest.mark.parametrize("bits", [12, 0, -8, 7])
def test_bits_not_divisible_by_8_is_a_clear_error(bits: int) -> None:
    with pytest.raises(ValueError, match="bits must"):
        check_bits(bits)
    with pytest.raises(ValueError, match="bits"):
        CMSEHConfig(image_dim=4, text_dim=4, bits=bits)
    with pytest.raises(ValueError, match="bits"):
        LinearHashHead(4, bits)


def test_binarize_maps_zero_to_minus_one_and_pack_codes_uses_sign() -> None:
    x = torch.tensor([[0.3, 0.0, -0.2, 1.0, -1.0, 0.5, 0.1, -0.1]])
    assert binarize(x).tolist() == [[1, -1, -1, 1, -1, 1, 1, -1]]
    assert pack_codes(binarize(x).numpy()).tolist() == [[0b10010110]]
    assert pack_codes(x.numpy()).tolist() == pack_codes((x.numpy() > 0).astype(int)).tolist()


def test_select_head_is_a_pairwise_softmax() -> None:
    torch.manual_seed(0)
    head = SelectHashHead(10, 16)
    x = torch.randn(5, 10)
    p = head.probabilities(x)
    assert p.shape == (5, 16, 2)
    torch.testing.assert_close(p.sum(-1), torch.ones(5, 16))
    torch.testing.assert_close(head(x), p[..., 0] - p[..., 1])
    assert set(head.codes(x).unique().tolist()) <= {-1.0, 1.0}


def test_head_rejects_features_of_the_wrong_dimension() -> None:
    head = LinearHashHead(10, 16)
    with pytest.raises(ValueError, match=r"shape \(n, 10\)"):
        head(torch.randn(3, 11))


def test_codes_are_deterministic_and_batch_independent(toy_model: CMSEH) -> None:
    img, txt, _ = _toy()
    a = toy_model.image_codes(img)
    b = toy_model.image_codes(img, batch_size=7)
    c = toy_model.image_codes(img[:5])
    assert a.dtype == np.int8 and a.shape == (96, 16)
    assert set(np.unique(a).tolist()) <= {-1, 1}
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:5], c)
    np.testing.assert_array_equal(toy_model.text_codes(txt), toy_model.text_codes(txt))
    # the same seed gives the same model
    img2, txt2, _ = _toy()
    again = build_cmseh(toy_model.config, seed=0)
    again.fit_input_stats(img2, txt2)
    np.testing.assert_array_equal(again.image_codes(img), a)


def test_untrained_head_gives_balanced_bits_on_zero_mean_input() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4000, 32)).astype(np.float32) + 5.0  # off-centre raw features
    model = build_cmseh(
        CMSEHConfig(image_dim=32, text_dim=32, bits=64, fusion=False, head="linear"), seed=0
    )
    model.fit_input_stats(x, x)  # standardisation centres them
    frac = (model.image_codes(x) > 0).mean(0)
    assert np.all(np.abs(frac - 0.5) < 0.1), frac


def test_model_rejects_wrong_feature_dims(toy_model: CMSEH) -> None:
    img, txt, _ = _toy()
    with pytest.raises(ValueError, match=r"image features must have shape \(n, 12\)"):
        toy_model.image_codes(txt)
    with pytest.raises(ValueError, match=r"text features must have shape \(n, 8\)"):
        toy_model.text_codes(img)
    with pytest.raises(ValueError, match="row-aligned"):
        toy_model(torch.from_numpy(img[:4]), torch.from_numpy(txt[:3]))


# ---------------------------------------------------------------------------- VTFN
def test_vtfn_single_modality_path_ignores_the_other_modality(toy_model: CMSEH) -> None:
    img, txt, _ = _toy()
    fusion = toy_model.fusion
    assert fusion is not None
    with torch.no_grad():
        xi = torch.from_numpy(img[:6])
        alone, _ = fusion(xi, None)
        paired, _ = fusion(xi, torch.from_numpy(txt[:6]))
        other, _ = fusion(xi, torch.from_numpy(txt[6:12]))
    assert alone is not None and paired is not None and other is not None
    # the paired pass mixes the modalities, the one-token pass does not see the text
    assert not torch.allclose(paired, other)
    assert not torch.allclose(alone, paired)
    # inference codes equal the one-token path through the head
    with torch.no_grad():
        emb = fusion(toy_model._prep(xi, "image"), None)[0]
        assert emb is not None
        codes = binarize(toy_model.head("image")(emb)).numpy()
    np.testing.assert_array_equal(codes, toy_model.image_codes(img[:6]))


def test_modality_dropout_mixes_one_and_two_token_rows() -> None:
    torch.manual_seed(0)
    vtfn = VTFN(6, 5, d_model=16, heads=2, layers=1, dropout=0.0).eval()
    x, t = torch.randn(8, 6), torch.randn(8, 5)
    uni = torch.tensor([True, False] * 4)
    with torch.no_grad():
        mi, mt = vtfn.forward_mixed(x, t, uni)
        si, _ = vtfn(x, None)
        _, st = vtfn(None, t)
        pi, pt = vtfn(x, t)
    assert si is not None and st is not None and pi is not None and pt is not None
    torch.testing.assert_close(mi[uni], si[uni])
    torch.testing.assert_close(mt[uni], st[uni])
    torch.testing.assert_close(mi[~uni], pi[~uni])
    torch.testing.assert_close(mt[~uni], pt[~uni])


@pytest.mark.parametrize(
    ("changes", "param_prefixes"),
    [
        ({"fusion": False}, ("fusion.",)),
        ({"hashing": False}, ("heads.",)),
        ({"head": "select"}, ()),
        ({"shared_head": True}, ("heads.text.",)),
    ],
)
def test_ablation_switches_change_the_model(changes: dict, param_prefixes: tuple) -> None:
    base = CMSEHConfig(image_dim=12, text_dim=12, bits=16, **SMALL)
    full = build_cmseh(base, seed=0)
    variant = build_cmseh(CMSEHConfig(**{**base.to_dict(), **changes}), seed=0)
    full_keys, var_keys = set(full.state_dict()), set(variant.state_dict())
    assert full_keys != var_keys or changes == {"head": "select"}
    for prefix in param_prefixes:
        assert any(k.startswith(prefix) for k in full_keys)
        assert not any(k.startswith(prefix) for k in var_keys)
    if changes == {"head": "select"}:
        assert isinstance(variant.head("image"), SelectHashHead)
        net = variant.head("image").net
        assert isinstance(net, torch.nn.Linear) and net.weight.shape[0] == 32
    if changes == {"hashing": False}:
        with pytest.raises(ValueError, match="no hash heads"):
            variant.head("image")
        emb = variant.image_embeddings(np.zeros((2, 12), np.float32))
        assert emb.shape == (2, 16)


def test_ablation_c_has_no_semantic_term_and_d_has_one() -> None:
    img, txt, labels = _toy(16)
    model = build_cmseh(CMSEHConfig(image_dim=12, text_dim=8, bits=16, **SMALL), seed=0)
    out = model(torch.from_numpy(img), torch.from_numpy(txt))
    c = CMSEHLoss(HashLossConfig(semantic="none"), 16)(out)
    d = CMSEHLoss(HashLossConfig(semantic="dcmh"), 16)(out, torch.from_numpy(labels))
    assert "semantic" not in c and "semantic" in d
    assert float(d["total"].detach()) > float(c["total"].detach())


# ---------------------------------------------------------------------------- losses
def test_label_similarity_multi_hot_and_class_ids() -> None:
    a = torch.tensor([[1, 0, 1], [0, 1, 0]])
    b = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 0, 0]])
    assert label_similarity(a, b).tolist() == [[1, 1, 0], [0, 0, 0]]
    assert label_similarity(torch.tensor([0, 2]), torch.tensor([2, 2, 0])).tolist() == [
        [0, 0, 1],
        [1, 1, 0],
    ]


def test_dcmh_nll_matches_its_definition() -> None:
    u = torch.tensor([[1.0, -1.0], [0.5, 0.5]])
    v = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    theta = 0.5 * u @ v.T
    expected = (torch.log1p(torch.exp(theta)) - s * theta).mean()
    torch.testing.assert_close(dcmh_nll(u, v, s), expected)


def test_quantization_balance_and_contrastive_values() -> None:
    u = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    assert float(quantization_loss(u)) == 0.0
    assert float(quantization_loss(u * 0.5)) == pytest.approx(0.25)
    assert float(bit_balance_loss(u)) == pytest.approx(0.5)  # bit 0 constant, bit 1 balanced
    a = torch.eye(4)
    assert float(contrastive_loss(a, a, 0.1)) < float(contrastive_loss(a, a.flip(0), 0.1))


def test_supervised_loss_without_labels_is_a_clear_error() -> None:
    img, txt, _ = _toy(8)
    model = build_cmseh(CMSEHConfig(image_dim=12, text_dim=8, bits=16, **SMALL), seed=0)
    out = model(torch.from_numpy(img), torch.from_numpy(txt))
    for semantic in ("dcmh", "proxy"):
        loss = CMSEHLoss(HashLossConfig(semantic=semantic, n_classes=4), 16)
        with pytest.raises(ValueError, match="needs labels"):
            loss(out, None)
    with pytest.raises(ValueError, match="needs labels"):
        fit_cmseh(img, txt, None, model={"bits": 16, **SMALL}, train={"epochs": 1}, progress=False)
    with pytest.raises(ValueError, match="n_classes"):
        HashLossConfig(semantic="proxy")


def test_proxy_loss_rejects_labels_of_the_wrong_width() -> None:
    loss = ProxyLoss(4, 16)
    u = torch.randn(3, 16)
    with pytest.raises(ValueError, match=r"multi-hot labels \(n, 4\)"):
        loss(u, u, torch.zeros(3, 5))


@pytest.mark.parametrize(
    ("model_kw", "loss_kw"),
    [
        ({"head": "linear"}, {"semantic": "dcmh"}),
        ({"head": "select"}, {"semantic": "proxy"}),
        ({"head": "linear", "fusion": False}, {"semantic": "none"}),
        ({"hashing": False}, {"semantic": "none"}),
    ],
)
def test_training_a_few_steps_lowers_each_loss(model_kw: dict, loss_kw: dict) -> None:
    img, txt, labels = _toy(128)
    cfg = CMSEHConfig(image_dim=12, text_dim=8, bits=16, dropout=0.0, **SMALL, **model_kw)
    model = build_cmseh(cfg, seed=0)
    model.fit_input_stats(img, txt)
    lcfg = HashLossConfig(n_classes=4, **loss_kw)
    loss = CMSEHLoss(lcfg, model.bits)
    xi, xt, y = torch.from_numpy(img), torch.from_numpy(txt), torch.from_numpy(labels)

    def terms() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            out = model(xi, xt, generator=gen)
            return {k: float(v) for k, v in loss(out, y).items()}

    before = terms()
    train_cmseh(
        model,
        loss,
        img,
        txt,
        labels,
        HashTrainConfig(epochs=8, batch_size=64, lr=3e-3),
        progress=False,
    )
    after = terms()
    assert after["total"] < before["total"]
    for name in ("semantic", "contrastive", "embedding"):
        if name in before:
            assert after[name] < before[name], (name, before, after)


def test_training_balances_bits_on_random_data() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 16)).astype(np.float32)
    model, _ = fit_cmseh(
        x,
        x,
        model={"bits": 32, "fusion": False, "shared_head": True},
        loss={"semantic": "none", "balance_weight": 1.0},
        train={"epochs": 10, "batch_size": 64},
        progress=False,
    )
    frac = (model.image_codes(x) > 0).mean(0)
    assert np.all(np.abs(frac - 0.5) < 0.15), frac


def test_checkpoint_resume_gives_the_same_model(tmp_path) -> None:
    img, txt, labels = _toy(64)
    model_kw: dict[str, Any] = {"bits": 16, **SMALL}
    full, hist = fit_cmseh(
        img,
        txt,
        labels,
        model=model_kw,
        train={"epochs": 4, "checkpoint_every": 2},
        progress=False,
    )
    ckpt = tmp_path / "ck"
    cfg = HashTrainConfig(epochs=4, checkpoint_every=2)

    def fresh() -> CMSEH:
        m = build_cmseh(CMSEHConfig(image_dim=12, text_dim=8, **model_kw), seed=0)
        m.fit_input_stats(img, txt)
        return m

    class Interrupted(Exception):
        pass

    calls = []

    def interrupt_in_epoch_3(m: CMSEH) -> dict[str, float]:
        calls.append(1)
        if len(calls) == 3:  # the epoch-2 checkpoint is on disk
            raise Interrupted
        return {}

    with pytest.raises(Interrupted):
        train_cmseh(
            fresh(),
            CMSEHLoss(HashLossConfig(), 16),
            img,
            txt,
            labels,
            cfg,
            checkpoint_dir=ckpt,
            evaluate=interrupt_in_epoch_3,
            progress=False,
        )
    assert len(json.loads((ckpt / "history.json").read_text())) == 2
    resumed = fresh()
    hist2 = train_cmseh(
        resumed,
        CMSEHLoss(HashLossConfig(), 16),
        img,
        txt,
        labels,
        cfg,
        checkpoint_dir=ckpt,
        progress=False,
    )
    assert len(hist2) == 4
    np.testing.assert_array_equal(resumed.image_codes(img), full.image_codes(img))
    assert hist2[-1]["loss"] == pytest.approx(hist[-1]["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="other settings"):
        train_cmseh(
            resumed,
            CMSEHLoss(HashLossConfig(), 16),
            img,
            txt,
            labels,
            HashTrainConfig(epochs=5),
            checkpoint_dir=ckpt,
            progress=False,
        )


def test_save_and_load_round_trip(tmp_path, toy_model: CMSEH) -> None:
    img, txt, _ = _toy()
    toy_model.save(tmp_path / "m", meta={"note": "x"})
    loaded = CMSEH.load(tmp_path / "m")
    assert loaded.config == toy_model.config and loaded.meta == {"note": "x"}
    np.testing.assert_array_equal(loaded.image_codes(img), toy_model.image_codes(img))
    np.testing.assert_array_equal(loaded.text_codes(txt), toy_model.text_codes(txt))
    with pytest.raises(FileNotFoundError, match="not a saved hash model"):
        CMSEH.load(tmp_path)


def test_evaluation_reports_both_directions_and_learns_classes() -> None:
    from vistrieve.data.tasks import HashingDataset, PairedEmbeddings

    img, txt, labels = _toy(160, dim_t=12)
    model, _ = fit_cmseh(
        img[:128],
        txt[:128],
        labels[:128],
        model={"bits": 16, **SMALL},
        train={"epochs": 10, "batch_size": 64, "lr": 3e-3},
        progress=False,
    )
    ds = HashingDataset(
        "toy",
        img[:128],
        txt[:128],
        labels[:128],
        img[128:],
        txt[128:],
        labels[128:],
        img[:128],
        txt[:128],
        labels[:128],
    )
    m = evaluate_map(model, ds)
    for prefix in ("hash", "relaxed", "embedding"):
        for direction in ("image_to_text", "text_to_image"):
            for k in ("ALL", "50"):
                assert 0.0 <= m[f"{prefix}_{direction}_mAP@{k}"] <= 1.0
    # 4 balanced classes: chance mAP is about 0.25
    assert m["hash_image_to_text_mAP@ALL"] > 0.6 and m["hash_text_to_image_mAP@ALL"] > 0.6
    pairs = PairedEmbeddings(img[128:], txt[128:], np.arange(32))
    p = evaluate_pairs(model, pairs, ks=(1, 10))
    assert {"hash_text_to_image_R@10", "relaxed_image_to_text_R@1", "embedding_mean_R"} <= set(p)


def test_cli_trains_and_writes_a_result(tmp_path, capsys) -> None:
    from vistrieve.cli import main as vistrieve_main

    def main(argv: list[str]) -> int:
        return vistrieve_main(["train", "hash", *argv])

    rng = np.random.default_rng(0)
    d = tmp_path / "emb"
    d.mkdir()
    base = rng.standard_normal((40, 16)).astype(np.float32)
    np.save(d / "image_embeddings.npy", base / np.linalg.norm(base, axis=1, keepdims=True))
    t = base + 0.1 * rng.standard_normal((40, 16)).astype(np.float32)
    np.save(d / "text_embeddings.npy", t / np.linalg.norm(t, axis=1, keepdims=True))
    out = tmp_path / "run"
    rc = main(
        [
            "--data",
            "paired",
            "--path",
            str(d),
            "--n-train",
            "20",
            "--bits",
            "16",
            "--d-model",
            "16",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"]["hash_text_to_image_R@1"] >= 0
    assert "20 images" in printed["protocol"]
    assert (out / "model" / "hash_model.json").is_file() and (out / "result.json").is_file()
    assert main(["--data", "wiki", "--out", str(out)]) == 2  # --path missing

    # Fewer options: the defaults fill in.
    capsys.readouterr()
    argv = ["train", "hash", "--data", "paired", "--path", str(d), "--n-train", "20"]
    argv += ["--bits", "16", "--d-model", "16", "--epochs", "1", "--out", str(tmp_path / "r2")]
    assert vistrieve_main([*argv, "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["bits"] == 16
    assert vistrieve_main(["train", "hash", "--data", "wiki", "--out", str(out)]) == 2


# ---------------------------------------------------------------------------- retriever
@pytest.fixture(scope="module")
def tiny_encoder():
    from vistrieve.encoders import create_encoder

    return create_encoder("clip-tiny-test")


def test_hash_retriever_retrieves_saves_and_loads(tmp_path, tiny_encoder) -> None:
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.retrievers.hashing import HashRetriever
    from vistrieve.types import Query

    enc = tiny_encoder
    corpus = ShapesWorld(seed=3, n_train=0, n_val=0, n_test=12, swap_fraction=0.0).corpus("test")
    model = build_cmseh(CMSEHConfig(image_dim=enc.dim, text_dim=enc.dim, bits=16, **SMALL))
    r = HashRetriever.build(enc, model, corpus, rescore=True)
    queries = [Query(text="a red circle"), Query(image=next(iter(corpus.values())).image)]
    hits = r.retrieve(queries, k=4)
    assert [len(h) for h in hits] == [4, 4]
    first = hits[1][0]
    assert first.metadata["rank"] == 0 and first.metadata["retriever"] == "hash"
    assert "hash" in first.scores and isinstance(first.metadata["hamming"], int)
    caps = r.retrieve(queries[:1], k=3, target="text")[0]
    assert all("#" in h.id and h.metadata["caption"] for h in caps)
    # without re-scoring the score is minus the Hamming distance
    r.rescore = False
    plain = r.retrieve(queries, k=4)
    assert all(h.score == -h.metadata["hamming"] for row in plain for h in row)
    r.save(tmp_path / "r")
    loaded = HashRetriever.load(tmp_path / "r", encoder=copy.deepcopy(enc))
    again = loaded.retrieve(queries, k=4)
    assert [[h.id for h in row] for row in again] == [[h.id for h in row] for row in plain]
    gone = corpus.ids[:2]
    assert loaded.remove(gone) == 2
    assert not any(h.metadata["item_id"] in gone for h in loaded.retrieve(queries, k=10)[0])
    with pytest.raises(ValueError, match="composed"):
        r.retrieve([Query(text="make it blue", image=first and corpus[corpus.ids[0]].image)])


def test_hash_retriever_refuses_a_model_with_other_bits(tiny_encoder) -> None:
    from vistrieve.indexes import BinaryHashIndex
    from vistrieve.retrievers.hashing import HashRetriever

    enc = tiny_encoder
    model = build_cmseh(CMSEHConfig(image_dim=enc.dim, text_dim=enc.dim, bits=16, **SMALL))
    with pytest.raises(ValueError, match="32-bit codes but the hash model makes 16-bit"):
        HashRetriever(enc, model, BinaryHashIndex(32))
    other = build_cmseh(CMSEHConfig(image_dim=8, text_dim=8, bits=16, **SMALL))
    with pytest.raises(ValueError, match="encoder"):
        HashRetriever(enc, other, BinaryHashIndex(16))
