"""Fine-tuning: the shared loop (LoRA / full, accelerate, checkpoints, resume, early stop),
two-step smoke runs of every stage, and adapter round trips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("peft")
pytest.importorskip("accelerate")

from vistrieve.adapters import load_finetuned, read_finetune_meta
from vistrieve.cli import main  # noqa: E402
from vistrieve.training.finetune import FinetuneConfig, FinetuneTask, finetune, save_finetuned


# ------------------------------------------------------------------------- a toy stage
class _Toy(FinetuneTask):
    """Regression y = x @ w with a small MLP; ``crash_at`` raises inside a batch."""

    stage = "clip"
    metric = "val_neg_mse"
    default_targets = ["0", "2"]

    def __init__(self, crash_at: int | None = None, scores: list[float] | None = None) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 4))
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(64, 4, generator=g)
        self.y = self.x @ torch.randn(4, 4, generator=g)
        self.calls = 0
        self.crash_at = crash_at
        self.scores = scores

    def batch(self, rng: np.random.Generator, batch_size: int) -> Any:
        self.calls += 1
        if self.crash_at is not None and self.calls == self.crash_at:
            raise RuntimeError("simulated crash")
        idx = torch.from_numpy(rng.choice(64, size=batch_size, replace=False))
        return self.x[idx], self.y[idx]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if self.scores is not None:
            return {"val_neg_mse": self.scores.pop(0)}
        with torch.no_grad():
            return {"val_neg_mse": -float(nn.functional.mse_loss(model(self.x), self.y))}


CFG = FinetuneConfig(steps=4, batch_size=16, lr=5e-2, r=2, alpha=4, eval_every=2, warmup_steps=0)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="method"):
        FinetuneConfig(method="qlora")
    with pytest.raises(ValueError, match="mixed_precision"):
        FinetuneConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="steps"):
        FinetuneConfig(steps=0)
    with pytest.raises(ValueError, match="unknown"):
        FinetuneConfig.from_dict({"rank": 4})
    assert FinetuneConfig.from_dict(CFG.to_dict()) == CFG


def test_lora_training_improves_and_records_everything(tmp_path: Path) -> None:
    result = finetune(_Toy(), CFG, tmp_path, progress=False)
    assert [h["step"] for h in result["history"]] == [0, 2, 4]
    assert result["best"]["val_neg_mse"] > result["frozen"]["val_neg_mse"]
    assert 0 < result["trainable_parameters"] < result["total_parameters"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 2, 4]
    assert json.loads((tmp_path / "result.json").read_text())["best_step"] == result["best_step"]
    meta = read_finetune_meta(tmp_path / "adapter")
    assert meta["stage"] == "clip" and meta["config"] == CFG.to_dict()
    # The saved best adapter reproduces the best metric on a fresh base model.
    merged = load_finetuned(_Toy().model, tmp_path / "adapter", stage="clip")
    assert _Toy().evaluate(merged)["val_neg_mse"] == pytest.approx(result["best"]["val_neg_mse"])


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    whole = finetune(_Toy(), CFG, tmp_path / "a", progress=False)
    with pytest.raises(RuntimeError, match="simulated"):
        finetune(_Toy(crash_at=3), CFG, tmp_path / "b", progress=False)
    assert json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
    resumed = finetune(_Toy(), CFG, tmp_path / "b", progress=False)
    assert [h["step"] for h in resumed["history"]] == [0, 2, 4]
    assert resumed["best"]["val_neg_mse"] == pytest.approx(whole["best"]["val_neg_mse"], rel=1e-5)


def test_resume_refuses_another_stage_or_configuration(tmp_path: Path) -> None:
    finetune(_Toy(), CFG, tmp_path, progress=False)

    class _Other(_Toy):
        stage = "hash"

    with pytest.raises(ValueError, match="stage 'clip', not 'hash'"):
        finetune(_Other(), CFG, tmp_path, progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        finetune(_Toy(), FinetuneConfig(**{**CFG.to_dict(), "lr": 1e-3}), tmp_path, progress=False)
    finetune(_Other(), CFG, tmp_path, resume=False, progress=False)  # explicit fresh start


def test_early_stopping_keeps_the_best_step(tmp_path: Path) -> None:
    cfg = FinetuneConfig(**{**CFG.to_dict(), "steps": 10, "eval_every": 1, "patience": 2})
    result = finetune(_Toy(scores=[0.5, 0.9, 0.4, 0.3, 0.2]), cfg, tmp_path, progress=False)
    assert result["stopped_early"] and result["best_step"] == 1
    assert [h["step"] for h in result["history"]] == [0, 1, 2, 3]


def test_keep_last_keeps_the_final_step_whatever_the_metric(tmp_path: Path) -> None:
    task = _Toy(scores=[0.9, 0.5, 0.1])
    task.keep_last = True
    result = finetune(task, CFG, tmp_path, progress=False)
    assert result["best_step"] == 4 and result["best"]["val_neg_mse"] == 0.1


def test_bad_targets_and_rank_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="matches no adaptable layer.*'0', '2'"):
        finetune(_Toy(), FinetuneConfig(target_modules=("q_proj",)), tmp_path, progress=False)
    with pytest.raises(ValueError, match="rank 64 exceeds"):
        finetune(_Toy(), FinetuneConfig(r=64), tmp_path, progress=False)


def test_full_fine_tuning_gradient_accumulation_and_bf16(tmp_path: Path) -> None:
    cfg = FinetuneConfig(**{**CFG.to_dict(), "method": "full", "grad_accum": 2})
    result = finetune(_Toy(), cfg, tmp_path / "full", progress=False)
    assert result["trainable_parameters"] == result["total_parameters"]
    assert (tmp_path / "full" / "model" / "model.safetensors").is_file()
    merged = load_finetuned(_Toy().model, tmp_path / "full" / "model")
    assert _Toy().evaluate(merged)["val_neg_mse"] == pytest.approx(result["best"]["val_neg_mse"])
    bf16 = FinetuneConfig(**{**CFG.to_dict(), "mixed_precision": "bf16"})
    r16 = finetune(_Toy(), bf16, tmp_path / "bf16", progress=False)
    assert r16["best_step"] > 0 and r16["best"]["val_neg_mse"] > r16["frozen"]["val_neg_mse"]


def test_load_finetuned_checks_the_stage(tmp_path: Path) -> None:
    finetune(_Toy(), CFG, tmp_path, progress=False)
    with pytest.raises(ValueError, match="fine-tuned 'clip' stage, not 'reranker'"):
        load_finetuned(_Toy().model, tmp_path / "adapter", stage="reranker")
    with pytest.raises(FileNotFoundError, match="not a vistrieve fine-tuning output"):
        load_finetuned(_Toy().model, tmp_path)


# -------------------------------------------------------------- adapter round trips
def _bump(model: nn.Module) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)


def _tiny_llama() -> tuple[Any, Any]:
    from tests.test_listwise import _tiny_lm

    return _tiny_lm()  # type: ignore[no-untyped-call]


def _families() -> dict[str, Any]:
    from vistrieve.rerankers.qformer import QFormerConfig, QFormerCrossEncoder

    def clip() -> tuple[nn.Module, Any]:
        from vistrieve.encoders import create_encoder

        torch.manual_seed(0)
        model = create_encoder("clip-tiny-test", progress=False).model  # type: ignore[attr-defined]
        text = torch.randint(1, 100, (2, 32))
        return model, lambda m: m.encode_text(text)

    def qformer() -> tuple[nn.Module, Any]:
        torch.manual_seed(0)
        cfg = QFormerConfig(width=32, layers=2, heads=4, num_queries=2, image_dim=8, vocab_size=20,
                            captioning=True, lm_weight=0.5)  # fmt: skip
        img, txt = torch.randn(2, 5, 8), torch.randint(1, 20, (2, 6))
        return QFormerCrossEncoder(cfg), lambda m: m(img, txt)

    def llama() -> tuple[nn.Module, Any]:
        model, _ = _tiny_llama()
        ids = torch.randint(3, 20, (2, 7))
        return model, lambda m: m(input_ids=ids).logits

    return {"clip": clip, "qformer": qformer, "llama": llama}


@pytest.mark.parametrize("family", ["clip", "qformer", "llama"])
def test_adapter_save_load_merge_round_trip_gives_identical_outputs(
    family: str, tmp_path: Path
) -> None:
    from vistrieve.adapters import apply_lora, load_adapter

    build = _families()[family]
    base, run = build()
    model = apply_lora(base.eval(), r=2, alpha=4)
    _bump(model)
    model.eval()
    with torch.no_grad():
        want = run(model)
    save_finetuned(model, tmp_path / "a", stage="reranker", config=FinetuneConfig(), base={})
    fresh, _ = build()
    merged = load_finetuned(fresh.eval(), tmp_path / "a", stage="reranker")
    unmerged = load_adapter(build()[0].eval(), tmp_path / "a").eval()
    with torch.no_grad():
        assert torch.allclose(run(merged), want, atol=1e-5)
        assert torch.allclose(run(unmerged), want, atol=1e-5)
        assert not torch.allclose(run(build()[0].eval()), want, atol=1e-4)


# ------------------------------------------------------------- every stage, two steps
COMMON = ["--steps", "2", "--eval-every", "1", "--no-progress"]


def _result(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "result.json").read_text()))


def test_finetune_clip_two_steps_and_adapter_in_create_encoder(tmp_path: Path) -> None:
    from vistrieve.encoders import create_encoder

    out = tmp_path / "clip"
    argv = ["finetune", "clip", "--base", "clip-tiny-test", "--data", "shapes-heldout",
            "--n-train", "24", "--n-val", "8", "--n-test", "8", "--batch-size", "8",
            "--hard-negatives", "--lr", "0.05", "--out", str(out), *COMMON]  # fmt: skip
    assert main(argv) == 0
    r = _result(out)
    assert r["stage"] == "clip" and r["data"]["hard_negatives"]
    assert {"val_text_to_image_R@1", "test_text_to_image_R@1"} <= set(r["frozen"])
    assert len(r["history"]) == 3
    plain = create_encoder("clip-tiny-test", progress=False)
    tuned = create_encoder("clip-tiny-test", adapter=str(out / "adapter"), progress=False)
    assert tuned.name.startswith(plain.name + "+finetuned:")
    assert tuned.spec["adapter"] == str(out / "adapter")  # type: ignore[attr-defined]
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    lora_b = [v for k, v in state["trainable"].items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().sum()) > 0 for v in lora_b)  # the adapters trained


def test_finetune_clip_resume_from_another_stage_is_an_error(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "x"
    _Toy.stage = "hash"
    try:
        finetune(_Toy(), CFG, out, progress=False)
    finally:
        _Toy.stage = "clip"
    argv = ["finetune", "clip", "--base", "clip-tiny-test", "--n-train", "16", "--n-val", "4",
            "--n-test", "4", "--batch-size", "8", "--out", str(out), *COMMON]  # fmt: skip
    assert main(argv) == 2
    assert "is of stage 'hash', not 'clip'" in capsys.readouterr().err


def test_finetune_rewriter_two_steps_from_a_manifest(tmp_path: Path, capsys: Any) -> None:
    model, tok = _tiny_llama()
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    rows = [{"caption": "a red circle", "instruction": "make it blue",
             "edited": "a blue circle"}] * 4  # fmt: skip
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "val.jsonl").write_text(json.dumps(rows[0]) + "\n")
    out = tmp_path / "rw"
    argv = ["finetune", "rewriter", "--base", str(tmp_path / "lm"),
            "--data", f"manifest:{tmp_path / 'train.jsonl'}",
            "--val", f"manifest:{tmp_path / 'val.jsonl'}", "--batch-size", "2",
            "--out", str(out), *COMMON]  # fmt: skip
    assert main(argv) == 0
    r = _result(out)
    assert r["stage"] == "rewriter" and "val_token_accuracy" in r["frozen"]
    assert (out / "adapter" / "adapter_config.json").is_file()
    from vistrieve.llm import HFChatLLM

    llm = HFChatLLM.from_pretrained(tmp_path / "lm", adapter=out / "adapter")
    assert "+finetuned:" in llm.name and isinstance(llm.complete([{"role": "user",
                                                          "content": "a"}]), str)  # fmt: skip
    dialogs = ["finetune", "rewriter", "--base", str(tmp_path / "lm"), "--data", "shapes-dialogs",
               "--n-train", "3", "--n-val", "2", "--batch-size", "2", "--out",
               str(tmp_path / "dlg"), *COMMON]  # fmt: skip
    assert main(dialogs) == 0
    got = _result(tmp_path / "dlg")["data"]  # one pair per round of 3 dialogs (<= 5 rounds)
    assert got["val_pairs"] == 2 and 3 <= got["train_pairs"] <= 15
    (tmp_path / "bad.jsonl").write_text('{"caption": "a", "instruction": "b"}\n')
    argv[5] = f"manifest:{tmp_path / 'bad.jsonl'}"
    assert main(argv) == 2
    assert "bad.jsonl:1: missing or empty field(s) ['edited']" in capsys.readouterr().err


def test_finetune_reranker_two_steps(tmp_path: Path) -> None:
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.recipes.shapes.qformer import train_shapes_qformer
    from vistrieve.rerankers.qformer import load_qformer_reranker

    # A captioning base: the adapter must carry over to both of its heads.
    train_shapes_qformer(tmp_path / "q", steps=2, n_train=16, n_val=4, captioning_steps=1,
                         progress=False)  # fmt: skip
    out = tmp_path / "rr"
    argv = ["finetune", "reranker", "--base", str(tmp_path / "q"), "--n-train", "16",
            "--n-val", "6", "--batch-size", "4", "--out", str(out), *COMMON]  # fmt: skip
    assert main(argv) == 0
    r = _result(out)
    assert {"val_rerank_R@1", "val_first_stage_R@1", "val_first_stage_R@16"} <= set(r["frozen"])
    corpus = ShapesWorld(seed=0, n_train=0, n_val=0, n_test=4).corpus("test")
    rr = load_qformer_reranker(tmp_path / "q", corpus, adapter=out / "adapter")
    assert "+finetuned:" in rr.name and rr.model.config.captioning


def test_finetune_hash_two_steps(tmp_path: Path) -> None:
    from tests.test_hashing import SMALL, _toy
    from vistrieve.data.tasks import HashingDataset
    from vistrieve.hashing.heads import CMSEH
    from vistrieve.hashing.losses import CMSEHLoss, HashLossConfig
    from vistrieve.training.hashing import HashData, fit_cmseh
    from vistrieve.training.tasks import HashFinetuneTask

    img, txt, labels = _toy()
    model, _ = fit_cmseh(img, txt, labels, model={"bits": 16, **SMALL}, train={"epochs": 1},
                         progress=False)  # fmt: skip
    model.save(tmp_path / "model")
    qi, qt, ql = _toy(n=32, seed=1)
    bench = HashingDataset("toy", img, txt, labels, qi, qt, ql, img, txt, labels)
    data = HashData("toy", img, txt, labels, benchmark=bench)
    task = HashFinetuneTask(CMSEH.load(tmp_path / "model"),
                            CMSEHLoss(HashLossConfig(semantic="dcmh"), 16), data)  # fmt: skip
    r = finetune(task, FinetuneConfig(steps=2, eval_every=1, r=2), tmp_path / "ft", progress=False)
    assert r["metric"] == "val_hash_text_to_image_mAP@ALL" and len(r["history"]) == 3
    loaded = CMSEH.load(tmp_path / "model", adapter=tmp_path / "ft" / "adapter")
    assert loaded.image_codes(img[:2]).shape == (2, 16)


def test_finetune_grace_two_steps_from_a_manifest(tmp_path: Path) -> None:
    from tests.test_generative import CAPTIONS, ITEMS, _features, _model
    from vistrieve.generative import GraceRetriever, build_identifiers

    ids = build_identifiers("numeric", ITEMS, seed=0)
    retriever = GraceRetriever(_model(), ids, num_beams=3)
    retriever.save(tmp_path / "g")
    del _features
    rows = [{"query": c, "id": i} for c, i in zip(CAPTIONS, ITEMS, strict=True)]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ft"
    argv = ["finetune", "grace", "--base", str(tmp_path / "g"),
            "--data", f"manifest:{tmp_path / 'q.jsonl'}",
            "--val", f"manifest:{tmp_path / 'q.jsonl'}",
            "--batch-size", "4", "--out", str(out), *COMMON]  # fmt: skip
    assert main(argv) == 0
    r = _result(out)
    assert {"val_R@1", "val_R@10"} <= set(r["frozen"])
    again = GraceRetriever.load(tmp_path / "g", adapter=out / "adapter", num_beams=3)
    from vistrieve.types import Query

    assert len(again.retrieve([Query(text=CAPTIONS[0])], k=3)[0]) == 3


def test_finetune_hash_command_on_a_wiki_format_file(tmp_path: Path) -> None:
    from scipy.io import savemat

    from tests.test_hashing import _toy

    img, txt, labels = _toy(n=80, n_classes=4, dim_i=12, dim_t=8)
    qi, qt, ql = _toy(n=24, n_classes=4, dim_i=12, dim_t=8, seed=1)
    mat = tmp_path / "wiki.mat"
    savemat(mat, {"I_tr": img, "T_tr": txt, "L_tr": labels.argmax(1)[:, None] + 1,
                  "I_te": qi, "T_te": qt, "L_te": ql.argmax(1)[:, None] + 1})  # fmt: skip
    argv = ["train", "hash", "--data", "wiki", "--path", str(mat), "--bits", "16",
            "--d-model", "16", "--epochs", "1", "--out", str(tmp_path / "h"),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out = tmp_path / "ft"
    assert main(["finetune", "hash", "--base", str(tmp_path / "h" / "model"),
                 "--data", f"wiki:{mat}", "--batch-size", "16", "--r", "4",
                 "--out", str(out), *COMMON]) == 0  # fmt: skip
    r = _result(out)
    assert r["stage"] == "hash" and "val_hash_text_to_image_mAP@ALL" in r["frozen"]
    assert r["command"].startswith("vistrieve finetune hash --base")


def test_finetune_grace_on_the_shapes_images_it_indexes(tmp_path: Path) -> None:
    g = tmp_path / "grace"
    assert main(["train", "grace", "--scheme", "numeric", "--n-images", "12", "--memorise-steps",
                 "4", "--retrieve-steps", "4", "--batch-size", "8", "--beams", "4",
                 "--out", str(g)]) == 0  # fmt: skip
    out = tmp_path / "ft"
    argv = ["finetune", "grace", "--base", str(g / "model"), "--n-val", "4", "--batch-size", "8",
            "--out", str(out), *COMMON]  # fmt: skip
    assert main(argv) == 0
    r = _result(out)
    # New pseudo-queries (up to 4 per image, never the image's own captions) train; the
    # images' first captions validate.
    assert r["data"]["val_pairs"] == 4 and 12 <= r["data"]["train_pairs"] <= 48


@pytest.mark.parametrize("mode", ["lora", "heads-only"])
def test_lit_stage_trains_tower_adapters_and_heads(mode: str, tmp_path: Path) -> None:
    from tests.test_lit import _tiny_text_tower, _TinyImageTower
    from vistrieve.encoders import apply_encoder_adapter
    from vistrieve.encoders.lit import LitEncoder, LitHeads
    from vistrieve.training.tasks import LitFinetuneTask

    def encoder() -> LitEncoder:
        torch.manual_seed(0)
        return LitEncoder(_TinyImageTower(), _tiny_text_tower(), LitHeads(16, 32, 8), None)

    rng = np.random.default_rng(0)
    caps = ["a dog runs on grass", "a cat on beach", "a dog on beach", "a cat runs"] * 3
    data = (rng.normal(size=(12, 16)).astype(np.float32), caps, np.arange(12))
    task = LitFinetuneTask(encoder(), data, data, data, fresh_heads=True,
                           tune_tower=mode == "lora")  # fmt: skip
    cfg = FinetuneConfig(steps=3, eval_every=1, batch_size=6, r=2, lr=1e-2,
                         method="lora" if mode == "lora" else "full")  # fmt: skip
    r = finetune(task, cfg, tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True)["trainable"]
    assert any("heads" in k for k in state)
    assert any("lora_" in k for k in state) == (mode == "lora")
    assert not any("tower" in k and "lora_" not in k for k in state)  # the tower stays frozen
    tuned = apply_encoder_adapter(encoder(), r["artefact"])
    emb = tuned.encode_text(caps[:2])
    assert emb.shape == (2, 8) and "+finetuned:" in tuned.name


def test_rewriter_labels_cover_exactly_the_answer_and_dialog_pairs() -> None:
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.llm.prompts import DIALOG_SUMMARY
    from vistrieve.recipes.shapes.data import shapes_dialog_pairs
    from vistrieve.training.tasks import RewritePair, RewriterFinetuneTask

    world = ShapesWorld(seed=0, n_train=0, n_val=0, n_test=20, n_dialogs=3, dialog_rounds=2)
    pairs = shapes_dialog_pairs(world, "test")
    dialogs = world.dialogs("test").examples
    assert len(pairs) == 2 * len(dialogs)
    first = dialogs[0]
    assert pairs[1].caption == first.caption and pairs[1].instruction.count("Q: ") == 2
    assert pairs[1].edited == world.dialogs("test").corpus[first.target_id].captions[0]

    model, tok = _tiny_llama()
    pair = RewritePair("a red circle", "make it blue", "a blue circle")
    task = RewriterFinetuneTask(model, tok, [pair], val_pairs=[RewritePair("a", "b", "c")])
    ids, mask, labels = task.encode(task.pairs)
    answer = labels[0][labels[0] != -100].tolist()
    assert answer == tok("Edited Description: a blue circle", add_special_tokens=False)[
        "input_ids"
    ] + [tok.eos_token_id]
    assert ids[0, -len(answer) :].tolist() == answer and int(mask.sum()) == ids.shape[1]
    task = RewriterFinetuneTask(
        model, tok, pairs, val_pairs=pairs[:1], prompt=DIALOG_SUMMARY,
        answer_field="Description", field_names=("caption", "dialog"),
    )  # fmt: skip
    ids, _, labels = task.encode(pairs[:1])
    text = tok.decode(labels[0][labels[0] != -100].tolist()[:1])
    assert text == "Description" or text.startswith("<unk>")  # the word-level test vocabulary
    assert 0.0 <= task.evaluate(model)["val_token_accuracy"] <= 1.0


def test_two_process_data_parallel_run_on_cpu(tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    out = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "vistrieve.cli",
           "finetune", "clip", "--base", "clip-tiny-test", "--n-train", "24", "--n-val", "8",
           "--n-test", "8", "--batch-size", "8", "--out", str(out), *COMMON]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = _result(out)
    assert r["processes"] == 2 and len(r["history"]) == 3
    assert proc.stdout.count('"processes": 2') == 1  # only the main process reports


def test_finetune_reranker_from_user_manifests(tmp_path: Path) -> None:
    from vistrieve.data.shapes import ShapesWorld

    world = ShapesWorld(seed=3, n_train=12, n_val=6, n_test=0, n_composed=0, n_dialogs=0)
    world.export("train", tmp_path / "tr")
    world.export("val", tmp_path / "va")
    out = tmp_path / "rr"
    argv = ["finetune", "reranker", "--base", "embedded",
            "--data", f"manifest:{tmp_path / 'tr' / 'manifest.jsonl'}",
            "--val", f"manifest:{tmp_path / 'va' / 'manifest.jsonl'}",
            "--batch-size", "4", "--out", str(out), *COMMON]  # fmt: skip
    assert main(argv) == 0
    r = _result(out)
    assert r["data"]["train_images"] >= 12 and r["data"]["val_images"] >= 6
    assert "val_rerank_R@1" in r["best"]
