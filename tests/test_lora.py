"""LoRA adapters: family defaults, bad targets and ranks, save/load/merge round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from vistrieve.adapters import (
    FAMILY_TARGETS,
    apply_lora,
    check_targets,
    load_adapter,
    model_family,
    save_adapter,
    trainable_parameters,
)


def _clip() -> torch.nn.Module:
    from vistrieve.encoders import create_encoder

    torch.manual_seed(0)  # the same random base model every call
    return create_encoder("clip-tiny-test", progress=False).model  # type: ignore[attr-defined, no-any-return]


def _qformer() -> torch.nn.Module:
    from vistrieve.rerankers.qformer import QFormerConfig, QFormerCrossEncoder

    return QFormerCrossEncoder(QFormerConfig(width=32, layers=1, heads=4, num_queries=2,
                                             image_dim=8, vocab_size=20))  # fmt: skip


def _bump_lora(model: torch.nn.Module) -> None:
    # Fresh LoRA B matrices are zero (the adapter starts as a no-op); give them values.
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)


def test_families_are_detected_and_defaults_match_layers() -> None:
    clip = _clip()
    assert model_family(clip) == "open_clip" and model_family(_qformer()) == "qformer"
    assert model_family(torch.nn.Linear(2, 2)) is None
    chosen = check_targets(clip, FAMILY_TARGETS["open_clip"], r=4)
    assert any(n.endswith("mlp.c_fc") for n in chosen)
    assert any(n.endswith("resblocks.0.attn") for n in chosen)
    assert not any(n.endswith("attn.out_proj") for n in chosen)


def test_only_adapters_train_and_save_load_merge_give_identical_outputs(tmp_path: Path) -> None:
    clip = _clip().eval()
    text = torch.randint(1, 100, (2, 32))
    image = torch.randn(2, 3, 32, 32)
    model = apply_lora(clip, r=4, alpha=8)
    trainable, total = trainable_parameters(model)
    assert 0 < trainable < total // 10
    _bump_lora(model)
    model.eval()
    with torch.no_grad():
        want_t = model.encode_text(text)
        want_i = model.encode_image(image)
    save_adapter(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    loaded = load_adapter(_clip().eval(), tmp_path / "adapter").eval()
    merged = load_adapter(_clip().eval(), tmp_path / "adapter", merge=True).eval()
    with torch.no_grad():
        for m in (loaded, merged):
            assert torch.allclose(m.encode_text(text), want_t, atol=1e-5)
            assert torch.allclose(m.encode_image(image), want_i, atol=1e-5)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        plain = _clip().eval().encode_text(text)
    assert not torch.allclose(plain, want_t, atol=1e-4)  # the adapter did change the output


def test_bad_targets_ranks_and_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="matches no adaptable layer.*end in"):
        apply_lora(_clip(), target_modules=["query_key_value"])
    with pytest.raises(ValueError, match="exceeds layer"):
        apply_lora(_qformer(), r=64)
    with pytest.raises(ValueError, match="no default LoRA targets"):
        apply_lora(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="no peft adapter"):
        save_adapter(torch.nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="not a peft adapter"):
        load_adapter(_qformer(), tmp_path)


def test_a_training_step_moves_only_the_adapters() -> None:
    model = apply_lora(_clip(), r=4)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora" not in n}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora" in n}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    text = torch.randint(1, 100, (4, 32))
    image = torch.randn(4, 3, 32, 32)
    losses = []
    for _ in range(2):
        t = torch.nn.functional.normalize(model.encode_text(text), dim=-1)
        i = torch.nn.functional.normalize(model.encode_image(image), dim=-1)
        loss = torch.nn.functional.cross_entropy(10 * t @ i.T, torch.arange(4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = dict(model.named_parameters())
    # peft adapts nn.MultiheadAttention by merging into its weights for each forward pass and
    # unmerging after, so frozen attention weights move by rounding error only.
    drift = max(float((base[n] - after[n]).abs().max()) for n in base)
    assert drift < 1e-5
    assert any(not torch.equal(lora[n], after[n]) for n in lora)
