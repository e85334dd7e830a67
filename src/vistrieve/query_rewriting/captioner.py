"""Captioners: transformers image-to-text models, and a small one trained on the shapes world.

* :class:`HFCaptioner` runs BLIP, BLIP-2, GIT or any transformers image-to-text model by hub
  name or local path.
* :class:`PrefixCaptioner` decodes a caption from an image encoder's feature vector with a
  small language model (the image enters as prefix embeddings, as in
  :class:`~vistrieve.generative.model.GraceModel`); :func:`train_shapes_captioner` trains one
  on the shapes world in a few CPU minutes, so that composed retrieval works offline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vistrieve.generative.model import GraceModel
from vistrieve.utils.images import load_image


class HFCaptioner:
    """A transformers image-to-text model (BLIP, BLIP-2, GIT, ...).

    Args:
        model: A model with ``generate(pixel_values=...)``.
        processor: Its processor (image preprocessing + tokenizer).
        name: Name recorded in caches and reports.
        prompt: Optional text prefix (BLIP's conditional captioning: "a picture of").
        max_new_tokens: Longest caption.
        batch_size: Images per ``generate`` call.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        name: str = "hf-captioner",
        prompt: str | None = None,
        max_new_tokens: int = 30,
        batch_size: int = 16,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], **kw: Any) -> HFCaptioner:
        """Load a captioning model and its processor by hub name or local path."""
        import transformers

        processor = transformers.AutoProcessor.from_pretrained(name_or_path)
        model = None
        errors = []
        for auto in (
            "AutoModelForImageTextToText",
            "AutoModelForVision2Seq",
            "AutoModelForCausalLM",
        ):
            cls_ = getattr(transformers, auto, None)
            if cls_ is None:
                continue
            try:
                model = cls_.from_pretrained(name_or_path)
                break
            except (ValueError, KeyError) as exc:
                errors.append(f"{auto}: {exc}")
        if model is None:
            raise ValueError(f"{name_or_path} is not an image-to-text model: {'; '.join(errors)}")
        kw.setdefault("name", str(name_or_path))
        return cls(model, processor, **kw)

    def caption(self, images: Sequence[Any]) -> list[str]:
        """One caption per image."""
        out: list[str] = []
        for s in range(0, len(images), self.batch_size):
            ims = [load_image(im).convert("RGB") for im in images[s : s + self.batch_size]]
            kw: dict[str, Any] = {"images": ims, "return_tensors": "pt"}
            if self.prompt:
                kw["text"] = [self.prompt] * len(ims)
            inputs = self.processor(**kw)
            with torch.inference_mode():
                ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
            if (
                self.prompt
                and "input_ids" in inputs
                and not getattr(self.model.config, "is_encoder_decoder", False)
            ):
                ids = ids[:, inputs["input_ids"].shape[1] :]
            texts = self.processor.batch_decode(ids, skip_special_tokens=True)
            out.extend(" ".join(t.split()) for t in texts)
        return out


class PrefixCaptioner:
    """Captions from image-encoder features through a small LM (greedy decoding).

    Args:
        model: A :class:`GraceModel` trained with caption targets (see
            :func:`train_captioner`).
        encoder: The image encoder whose features the model was trained on.
        name: Name recorded in caches and reports.
        max_new_tokens: Longest caption.
    """

    def __init__(
        self, model: GraceModel, encoder: Any, *, name: str = "prefix-captioner",
        max_new_tokens: int = 32, batch_size: int = 64,
    ) -> None:  # fmt: skip
        self.model = model.eval()
        self.encoder = encoder
        self.name = name
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def caption_features(self, features: np.ndarray) -> list[str]:
        """Captions of feature vectors (N, image_dim)."""
        out: list[str] = []
        for s in range(0, len(features), self.batch_size):
            emb, mask = self.model.image_source(features[s : s + self.batch_size])
            out.extend(self.model.generate_text(emb, mask, max_new_tokens=self.max_new_tokens))
        return out

    def caption(self, images: Sequence[Any]) -> list[str]:
        """One caption per image."""
        feats = np.asarray(self.encoder.encode_image([load_image(im) for im in images]))
        return self.caption_features(feats)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """The underlying model (see :meth:`GraceModel.save`)."""
        self.model.save(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], encoder: Any, **kw: Any) -> PrefixCaptioner:
        """A captioner written by :meth:`save`."""
        model, _ = GraceModel.load(directory)
        return cls(model, encoder, **kw)


EMBEDDED_CAPTIONER = "shapes-captioner"


def _embedded_dir() -> Path:
    from vistrieve.encoders.embedded import WEIGHTS_DIR

    return WEIGHTS_DIR / EMBEDDED_CAPTIONER


def install_embedded_captioner(directory: str | os.PathLike[str]) -> Path:
    """Copy a trained shapes captioner (``train_shapes_captioner`` output) into the package,
    with the language model's weights in float16; returns the installed directory."""
    from vistrieve.utils.io import atomic_directory

    model, _ = GraceModel.load(directory)
    record = Path(directory) / "train_record.json"
    dest = _embedded_dir()
    with atomic_directory(dest) as tmp:
        model.half().save(tmp / "model")
        if record.is_file():
            (tmp / "train_record.json").write_bytes(record.read_bytes())
    # atomic_directory swapped tmp in as dest; the model lives one level down.
    return dest


def load_shapes_captioner(encoder: Any = None, **kw: Any) -> PrefixCaptioner:
    """The shapes-world captioner that ships in the package (with the embedded shapes-clip
    image tower unless ``encoder`` is given)."""
    root = _embedded_dir() / "model"
    if not (root / "grace_config.json").is_file():
        raise FileNotFoundError(
            f"no embedded captioner at {root}; train one with train_shapes_captioner() and "
            "install it with install_embedded_captioner()"
        )
    if encoder is None:
        from vistrieve.encoders import create_encoder

        encoder = create_encoder("shapes-clip", progress=False)
    model, _ = GraceModel.load(root)
    kw.setdefault("name", "shapes-captioner (embedded)")
    return PrefixCaptioner(model.float(), encoder, **kw)


def train_captioner(
    model: GraceModel,
    features: np.ndarray,
    captions: Sequence[Sequence[str]],
    *,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` to caption image features: each step samples images and one of their
    captions. Returns the loss of every step."""
    from tqdm.auto import tqdm

    if len(features) != len(captions):
        raise ValueError(f"{len(features)} feature rows but {len(captions)} caption lists")
    if any(not c for c in captions):
        raise ValueError("every image needs at least one caption")
    tok = model.tokenizer
    encoded = [
        [[*tok(c, add_special_tokens=False)["input_ids"], model.eos] for c in caps]
        for caps in captions
    ]
    feats = torch.as_tensor(np.asarray(features, np.float32))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="train captioner", disable=not progress)
    for _ in bar:
        rows = rng.integers(len(feats), size=batch_size)
        targets = [encoded[r][int(rng.integers(len(encoded[r])))] for r in rows]
        emb, mask = model.image_source(feats[rows])
        loss = model.loss(emb, mask, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.item()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    return losses


def train_shapes_captioner(
    out: str | os.PathLike[str] = "runs/shapes-captioner",
    *,
    steps: int = 1500,
    n_train: int = 4000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a :class:`PrefixCaptioner` on the shapes world's training split (shapes-clip
    image features, a small T5) and save it; returns a record with the validation
    exact-match rate (share of generated captions that equal one of the references)."""
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.generative.model import word_tokenizer
    from vistrieve.generative.shapes import tiny_t5
    from vistrieve.utils.io import atomic_write_json

    t0 = time.perf_counter()
    world = ShapesWorld(seed=seed, n_train=n_train)
    train, val = world.corpus("train"), world.corpus("val")
    encoder = create_encoder("shapes-clip", progress=False)
    words = sorted({w.strip(",:") for it in train.values() for c in it.captions for w in c.split()})
    tok = word_tokenizer(words)
    model = GraceModel(tiny_t5(len(tok), seed=seed), tok, image_dim=encoder.dim)
    feats = np.asarray(encoder.encode_image([it.image for it in train.values()]))
    losses = train_captioner(
        model, feats, [it.captions for it in train.values()], steps=steps, seed=seed,
        progress=progress,
    )  # fmt: skip
    captioner = PrefixCaptioner(model, encoder, name=f"shapes-captioner:{Path(out).name}")
    vitems = list(val.values())[:200]
    caps = captioner.caption([it.image for it in vitems])
    exact = float(np.mean([c in it.captions for c, it in zip(caps, vitems, strict=True)]))
    captioner.save(out)
    record = {
        "steps": steps,
        "train_images": len(train),
        "seconds": time.perf_counter() - t0,
        "final_loss": float(np.mean(losses[-50:])),
        "val_exact_match": exact,
        "val_examples": [
            {"caption": c, "references": list(it.captions)}
            for c, it in zip(caps[:5], vitems[:5], strict=True)
        ],
    }
    atomic_write_json(Path(out) / "train_record.json", record)
    return record
