"""The shapes world: a seeded, procedurally generated, CLEVR-like image-text dataset.

Every image holds one to three coloured shapes on a dark background, each in its own
horizontal slot (left, middle, right). A scene graph drives everything else: five caption
paraphrases per image, multi-hot "colour shape" labels for hashing mAP, composed-retrieval
triplets (reference image + "make the circle green" -> a target image that exists in the
corpus), ChatIR-style dialogs whose answers come from the scene graph, and a simulated
answerer for free-form questions.

It is built so that attribute binding matters: with ``swap_fraction`` > 0, the
colour-swapped twin of a multi-object scene ("a blue circle and a red square" for "a red
circle and a blue square") is added to the same split, so a bag-of-words model cannot tell
an image from its twin while a model that binds colours to shapes can. ``holdout_combos``
keeps chosen colour-shape pairs out of training and validation and puts them in a separate
``heldout`` split, for compositional generalisation.

Everything is a pure function of the config: identical seed and options give identical
scenes, captions, pixels and examples. Each split draws from its own random stream, so the
test split does not change when the training split is resized.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vistrieve.data.tasks import ComposedDataset, ComposedExample, DialogDataset, DialogExample
from vistrieve.types import Corpus, DialogTurn, Item
from vistrieve.utils.io import atomic_write, atomic_write_bytes

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 100, 240),
    "yellow": (240, 225, 40),
    "purple": (160, 70, 220),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "cyan": (40, 220, 230),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "hexagon")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "middle", "right")
LABELS: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
BACKGROUND = (28, 28, 32)
_NUMBERS = {1: "one", 2: "two", 3: "three"}
_SPLIT_SALT = {"train": 1, "val": 2, "test": 3, "heldout": 4}


@dataclass(frozen=True, order=True)
class ShapeObject:
    """One object of a scene: attributes plus its exact placement (fraction of the image)."""

    slot: int
    colour: str
    shape: str
    size: str
    dx: float = 0.0
    dy: float = 0.0

    @property
    def position(self) -> str:
        """``left``, ``middle`` or ``right``."""
        return POSITIONS[self.slot]

    @property
    def label(self) -> str:
        """The "colour shape" label."""
        return f"{self.colour} {self.shape}"

    def key(self) -> tuple[str, str, str, int]:
        """Attributes that define the object semantically (placement jitter excluded)."""
        return (self.colour, self.shape, self.size, self.slot)


@dataclass(frozen=True)
class Scene:
    """A scene graph: objects ordered left to right."""

    objects: tuple[ShapeObject, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(sorted(self.objects, key=lambda o: o.slot)))
        slots = [o.slot for o in self.objects]
        if len(set(slots)) != len(slots):
            raise ValueError(f"two objects share a slot in {self}")

    def key(self) -> tuple[tuple[str, str, str, int], ...]:
        """Canonical semantic key: equal keys mean the same scene for retrieval."""
        return tuple(o.key() for o in self.objects)

    @property
    def labels(self) -> tuple[str, ...]:
        """Sorted unique "colour shape" labels."""
        return tuple(sorted({o.label for o in self.objects}))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(ShapeObject(**o) for o in data["objects"]))


@dataclass(frozen=True)
class ShapesConfig:
    """Options of the shapes world (all JSON-round-trippable)."""

    seed: int = field(default=0, metadata={"help": "seed of every random choice"})
    n_train: int = field(default=4000, metadata={"help": "base images in the train split"})
    n_val: int = field(default=500, metadata={"help": "base images in the val split"})
    n_test: int = field(default=1000, metadata={"help": "base images in the test split"})
    image_size: int = field(default=64, metadata={"help": "side of the square images, px"})
    min_objects: int = field(default=1, metadata={"help": "fewest objects per image"})
    max_objects: int = field(default=3, metadata={"help": "most objects per image (<= 3)"})
    swap_fraction: float = field(
        default=0.3,
        metadata={"help": "share of multi-object scenes whose colour-swapped twin is added"},
    )
    holdout_combos: tuple[tuple[str, str], ...] = field(
        default=(), metadata={"help": "(colour, shape) pairs kept out of train/val"}
    )
    n_composed: int = field(default=500, metadata={"help": "composed triplets per split"})
    n_dialogs: int = field(default=200, metadata={"help": "dialogs per split"})
    dialog_rounds: int = field(default=5, metadata={"help": "question/answer rounds per dialog"})

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test", "n_composed", "n_dialogs", "dialog_rounds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 px, got {self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if self.max_objects > len(POSITIONS):
            raise ValueError(
                f"max_objects {self.max_objects} exceeds the {len(POSITIONS)} slots of an image"
            )
        if not 0.0 <= self.swap_fraction <= 1.0:
            raise ValueError(f"swap_fraction must be in [0, 1], got {self.swap_fraction}")
        combos = tuple(tuple(c) for c in self.holdout_combos)
        for combo in combos:
            if len(combo) != 2 or combo[0] not in COLOURS or combo[1] not in SHAPES:
                raise ValueError(
                    f"holdout combo {combo!r} must be (colour, shape) with colour in "
                    f"{sorted(COLOURS)} and shape in {list(SHAPES)}"
                )
        if len(combos) >= len(LABELS):
            raise ValueError("cannot hold out every colour-shape combination")
        object.__setattr__(self, "holdout_combos", combos)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        d = asdict(self)
        d["holdout_combos"] = [list(c) for c in self.holdout_combos]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShapesConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ShapesConfig keys: {sorted(unknown)}")
        d = dict(data)
        if "holdout_combos" in d:
            d["holdout_combos"] = tuple(tuple(c) for c in d["holdout_combos"])
        return cls(**d)


# --------------------------------------------------------------------------- captions
def _article(words: str) -> str:
    return f"an {words}" if words[0] in "aeiou" else f"a {words}"


def _phrase(o: ShapeObject, *, size: bool = False, position: bool = False) -> str:
    core = f"{o.size} {o.colour} {o.shape}" if size else f"{o.colour} {o.shape}"
    text = _article(core)
    if position:
        text += " in the middle" if o.position == "middle" else f" on the {o.position}"
    return text


def _join(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def captions_for(scene: Scene, rng: np.random.Generator) -> tuple[str, ...]:
    """Five distinct caption paraphrases of ``scene`` (lower case, no final period)."""
    objs = list(scene.objects)
    n = len(objs)
    shuffled = [objs[i] for i in rng.permutation(n)]
    caps = [
        _join([_phrase(o) for o in objs]),
        _join([_phrase(o, size=True, position=True) for o in shuffled]),
    ]
    if n == 1:
        o = objs[0]
        caps.append(f"a single {o.colour} {o.shape}")
        caps.append(f"one {o.size} {o.colour} {o.shape} on a dark background")
        caps.append(f"a picture of {_phrase(o, size=True, position=True)}")
    else:
        a, b = shuffled[0], shuffled[1]
        rel = "left of" if a.slot < b.slot else "right of"
        relational = f"{_phrase(a)} to the {rel} {_phrase(b)}"
        if n == 3:
            c = shuffled[2]
            relational += f", with {_phrase(c, position=True)}"
        caps.append(relational)
        caps.append(f"{_NUMBERS[n]} shapes: " + _join([_phrase(o) for o in shuffled]))
        caps.append("a picture of " + _join([_phrase(o, size=True) for o in objs]))
    out: list[str] = []
    for c in caps:
        if c in out:
            c = c + " on a dark background"
        out.append(c)
    return tuple(out)


def caption_signature(scene: Scene, caption: str) -> tuple[Any, ...]:
    """What ``caption`` pins down about ``scene``, for deciding which scenes it describes.

    Two scenes are both described by a caption (as far as this grammar's captions go) when
    their signatures under that caption are equal: the multiset of colour-shape pairs;
    plus sizes when the caption names sizes; in left-to-right order when it relates objects
    ("to the left of"); with their slots when it places them ("on the left", "in the
    middle"). An approximation that errs towards "different" (a relational caption that
    also places one object compares every slot). Used to keep true matches out of the hard
    negatives a reranker is trained on.
    """
    text = f" {caption} "
    sized = " small " in text or " large " in text
    placed = any(p in text for p in ("on the left", "on the right", "in the middle"))
    related = "to the left of" in text or "to the right of" in text

    def attrs(o: ShapeObject) -> tuple[Any, ...]:
        base: tuple[Any, ...] = (o.colour, o.shape)
        if sized:
            base += (o.size,)
        if placed:
            base += (o.slot,)
        return base

    parts = [attrs(o) for o in scene.objects]  # objects are in slot order
    return tuple(parts) if (related or placed) else tuple(sorted(parts))


# --------------------------------------------------------------------------- rendering
def _polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if kind == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if kind == "diamond":
        return [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    if kind == "hexagon":
        return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 7)[:-1]]
    if kind == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.45
            a = -np.pi / 2 + i * np.pi / 5
            pts.append((cx + rad * np.cos(a), cy + rad * np.sin(a)))
        return pts
    raise ValueError(f"unknown shape {kind!r}")


def render_scene(scene: Scene, size: int = 64) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``size`` x ``size`` pixels (deterministic)."""
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        cx = size * ((o.slot + 0.5) / 3 + o.dx)
        cy = size * (0.5 + o.dy)
        r = size * (0.145 if o.size == "large" else 0.085)
        colour = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon(_polygon(o.shape, cx, cy, r), fill=colour)
    return img


# --------------------------------------------------------------------------- the world
@dataclass(frozen=True)
class _Split:
    scenes: tuple[Scene, ...]
    captions: tuple[tuple[str, ...], ...]
    composed: tuple[ComposedExample, ...]
    dialogs: tuple[DialogExample, ...]


class ShapesWorld:
    """The generated dataset: splits of images with captions, triplets and dialogs.

    Args:
        config: Options; keyword ``overrides`` replace single fields.

    Example:
        >>> world = ShapesWorld(seed=1, n_train=10, n_val=0, n_test=20)
        >>> corpus = world.corpus("test")
        >>> len(corpus.ids) >= 20, len(next(iter(corpus.values())).captions)
        (True, 5)
    """

    def __init__(self, config: ShapesConfig | None = None, **overrides: Any) -> None:
        base = config or ShapesConfig()
        if "holdout_combos" in overrides:
            overrides["holdout_combos"] = tuple(tuple(c) for c in overrides["holdout_combos"])
        self.config = replace(base, **overrides) if overrides else base
        self._held = {tuple(c) for c in self.config.holdout_combos}
        self._splits: dict[str, _Split] = {}
        self._images: dict[str, Image.Image] = {}
        self._corpora: dict[str, Corpus] = {}

    @property
    def splits(self) -> tuple[str, ...]:
        """Split names: train, val, test, plus heldout when combos are held out."""
        return ("train", "val", "test", "heldout") if self._held else ("train", "val", "test")

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; available: {', '.join(self.splits)}")

    def _size(self, split: str) -> int:
        c = self.config
        return {"train": c.n_train, "val": c.n_val, "test": c.n_test, "heldout": c.n_test}[split]

    # -- scene sampling ------------------------------------------------------------------
    def _allowed(self, split: str, scene: Scene) -> bool:
        if not self._held:
            return True
        held = any((o.colour, o.shape) in self._held for o in scene.objects)
        if split in ("train", "val"):
            return not held
        if split == "heldout":
            return held
        return True

    def _random_object(self, rng: np.random.Generator, slot: int) -> ShapeObject:
        return ShapeObject(
            slot=slot,
            colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            size=SIZES[int(rng.integers(len(SIZES)))],
            dx=float(rng.uniform(-0.04, 0.04)),
            dy=float(rng.uniform(-0.18, 0.18)),
        )

    def _random_scene(self, rng: np.random.Generator, split: str) -> Scene:
        c = self.config
        for _ in range(1000):
            n = int(rng.integers(c.min_objects, c.max_objects + 1))
            slots = sorted(rng.choice(len(POSITIONS), size=n, replace=False).tolist())
            objs = [self._random_object(rng, s) for s in slots]
            if split == "heldout" and not any((o.colour, o.shape) in self._held for o in objs):
                # Plant a held-out combination so the split is never starved.
                colour, shape = sorted(self._held)[int(rng.integers(len(self._held)))]
                i = int(rng.integers(len(objs)))
                objs[i] = replace(objs[i], colour=colour, shape=shape)
            scene = Scene(tuple(objs))
            if self._allowed(split, scene):
                return scene
        raise RuntimeError(f"could not sample an allowed scene for split {split!r}")

    @staticmethod
    def _swap_twin(scene: Scene, rng: np.random.Generator) -> Scene | None:
        objs = list(scene.objects)
        pairs = [
            (i, j)
            for i in range(len(objs))
            for j in range(i + 1, len(objs))
            if objs[i].colour != objs[j].colour and objs[i].shape != objs[j].shape
        ]
        if not pairs:
            return None
        i, j = pairs[int(rng.integers(len(pairs)))]
        objs[i], objs[j] = (
            replace(objs[i], colour=objs[j].colour),
            replace(objs[j], colour=objs[i].colour),
        )
        return Scene(tuple(objs))

    # -- split generation ----------------------------------------------------------------
    def _generate(self, split: str) -> _Split:
        if split in self._splits:
            return self._splits[split]
        c = self.config
        rng = np.random.default_rng([c.seed, _SPLIT_SALT[split]])
        scenes: list[Scene] = []
        for _ in range(self._size(split)):
            scene = self._random_scene(rng, split)
            scenes.append(scene)
            if len(scene.objects) > 1 and rng.random() < c.swap_fraction:
                twin = self._swap_twin(scene, rng)
                if twin is not None and self._allowed(split, twin):
                    scenes.append(twin)
        composed: list[ComposedExample] = []
        n_base = len(scenes)
        n_comp = min(c.n_composed, n_base) if n_base else 0
        for e in range(n_comp):
            for _ in range(50):
                ref_idx = int(rng.integers(n_base))
                edit = self._edit(scenes[ref_idx], rng, split)
                if edit is not None:
                    break
            else:
                continue
            text, kind, target = edit
            scenes.append(target)
            composed.append(
                ComposedExample(
                    id=f"{split}-cir-{e:05d}",
                    reference_id=f"{split}-{ref_idx:05d}",
                    modification=text,
                    target_ids=(f"{split}-{len(scenes) - 1:05d}",),
                    metadata={"edit": kind},
                )
            )
        captions = tuple(captions_for(s, rng) for s in scenes)
        # Every image with the same semantic scene as a target is a correct target too.
        by_key: dict[Any, list[str]] = {}
        for i, s in enumerate(scenes):
            by_key.setdefault(s.key(), []).append(f"{split}-{i:05d}")
        composed = [
            replace(
                ex, target_ids=tuple(by_key[scenes[int(ex.target_ids[0].rsplit("-", 1)[1])].key()])
            )
            for ex in composed
        ]
        dialogs = []
        n_dlg = min(c.n_dialogs, len(scenes)) if scenes else 0
        for d, idx in enumerate(
            rng.choice(len(scenes), size=n_dlg, replace=False).tolist() if n_dlg else []
        ):
            caption, turns = self._dialog(scenes[idx], rng)
            dialogs.append(
                DialogExample(
                    id=f"{split}-dlg-{d:05d}",
                    target_id=f"{split}-{idx:05d}",
                    caption=caption,
                    turns=turns,
                )
            )
        result = _Split(tuple(scenes), captions, tuple(composed), tuple(dialogs))
        self._splits[split] = result
        return result

    def _edit(
        self, ref: Scene, rng: np.random.Generator, split: str
    ) -> tuple[str, str, Scene] | None:
        objs = list(ref.objects)
        kinds = ["colour", "shape", "size"]
        if len(objs) > 1:
            kinds.append("remove")
        if len(objs) < self.config.max_objects:
            kinds.append("add")
        kind = kinds[int(rng.integers(len(kinds)))]
        i = int(rng.integers(len(objs)))
        o = objs[i]
        same_shape = sum(x.shape == o.shape for x in objs) > 1
        name = f"{o.colour} {o.shape}" if same_shape else o.shape
        if kind == "colour":
            colour = [c for c in COLOURS if c != o.colour][int(rng.integers(len(COLOURS) - 1))]
            objs[i] = replace(o, colour=colour)
            text = f"make the {name} {colour}"
        elif kind == "shape":
            shape = [s for s in SHAPES if s != o.shape][int(rng.integers(len(SHAPES) - 1))]
            objs[i] = replace(o, shape=shape)
            text = f"turn the {name} into {_article(shape)}"
        elif kind == "size":
            size = "large" if o.size == "small" else "small"
            objs[i] = replace(o, size=size)
            text = f"make the {name} {'bigger' if size == 'large' else 'smaller'}"
        elif kind == "remove":
            if same_shape:
                return None
            del objs[i]
            text = f"remove the {name}"
        else:
            free = [s for s in range(len(POSITIONS)) if s not in {x.slot for x in objs}]
            slot = free[int(rng.integers(len(free)))]
            new = self._random_object(rng, slot)
            objs.append(new)
            where = "in the middle" if new.position == "middle" else f"on the {new.position}"
            text = f"add {_article(f'{new.size} {new.colour} {new.shape}')} {where}"
        target = Scene(tuple(objs))
        if target.key() == ref.key() or not self._allowed(split, target):
            return None
        return text, kind, target

    def _dialog(self, scene: Scene, rng: np.random.Generator) -> tuple[str, tuple[DialogTurn, ...]]:
        objs = list(scene.objects)
        n = len(objs)
        first = objs[int(rng.integers(n))]
        vague = [
            f"a picture with {_NUMBERS[n]} shape{'s' if n > 1 else ''}",
            f"something {first.colour}",
            f"there is {_article(first.shape)} somewhere",
            f"{_article(first.size)} shape",
        ]
        caption = vague[int(rng.integers(len(vague)))]
        pool: list[tuple[str, str]] = [("how many objects are there?", _NUMBERS[n])]
        for o in objs:
            where = "in the middle" if o.position == "middle" else f"on the {o.position}"
            pool.append((f"what colour is the shape {where}?", o.colour))
            pool.append((f"what shape is {where}?", _article(o.shape)))
            pool.append((f"how big is the shape {where}?", o.size))
        absent = [s for s in SHAPES if s not in {o.shape for o in objs}]
        if absent:
            s = absent[int(rng.integers(len(absent)))]
            pool.append((f"is there {_article(s)}?", "no"))
        order = rng.permutation(len(pool)).tolist()
        # Count first when the caption does not already give it, then informative rounds.
        seen: set[str] = set()
        turns: list[DialogTurn] = []
        for k in order:
            q, a = pool[k]
            if q in seen or (q.startswith("how many") and caption.startswith("a picture with")):
                continue
            seen.add(q)
            turns.append(DialogTurn(q, a))
            if len(turns) == self.config.dialog_rounds:
                break
        return caption, tuple(turns)

    # -- public API ----------------------------------------------------------------------
    def corpus(self, split: str) -> Corpus:
        """The images of ``split`` as a corpus of in-memory PIL images with 5 captions each."""
        self._check_split(split)
        if split not in self._corpora:
            data = self._generate(split)
            items = []
            for i, (scene, caps) in enumerate(zip(data.scenes, data.captions, strict=True)):
                image_id = f"{split}-{i:05d}"
                items.append(
                    Item(
                        image_id,
                        image=self._image(image_id, scene),
                        captions=caps,
                        labels=scene.labels,
                        metadata={"scene": scene.to_dict(), "split": split},
                    )
                )
            self._corpora[split] = Corpus(items)
        return self._corpora[split]

    def _image(self, image_id: str, scene: Scene) -> Image.Image:
        if image_id not in self._images:
            self._images[image_id] = render_scene(scene, self.config.image_size)
        return self._images[image_id]

    def scene(self, image_id: str) -> Scene:
        """The scene graph of an image id such as ``"test-00042"``.

        Raises:
            KeyError: the id names no image of this world.
        """
        split, _, num = image_id.rpartition("-")
        if split not in self.splits or not num.isdigit():
            raise KeyError(f"{image_id!r} is not a shapes-world image id")
        scenes = self._generate(split).scenes
        if int(num) >= len(scenes):
            raise KeyError(f"{image_id!r} is not in split {split!r} ({len(scenes)} images)")
        return scenes[int(num)]

    def render(self, scene: Scene) -> Image.Image:
        """Draw any scene with this world's image size."""
        return render_scene(scene, self.config.image_size)

    def composed(self, split: str) -> ComposedDataset:
        """Composed-retrieval triplets of ``split`` (targets are in the split's corpus)."""
        self._check_split(split)
        return ComposedDataset(
            self.corpus(split), self._generate(split).composed, f"shapes-{split}"
        )

    def dialogs(self, split: str) -> DialogDataset:
        """ChatIR-style dialogs of ``split`` (targets are in the split's corpus)."""
        self._check_split(split)
        return DialogDataset(self.corpus(split), self._generate(split).dialogs, f"shapes-{split}")

    def answer(self, image_id: str, question: str) -> str:
        """Answer a free-form question about an image from its scene graph.

        Understands counts, "is there a (colour) shape", colour / shape / size of an object
        named by colour, shape or position, and "what is on the left". Returns
        ``"I don't know"`` for anything else; never raises for a known image id.
        """
        return answer_question(self.scene(image_id), question)

    def export(self, split: str, directory: str | os.PathLike[str]) -> Path:
        """Write ``split`` as PNG files, ``captions.csv`` and ``manifest.jsonl``.

        ``captions.csv`` has one ``image,caption`` row per caption (Flickr8k style);
        ``manifest.jsonl`` has one object per image with ``id``, ``image`` (relative path),
        ``captions`` and ``labels``. Returns the directory.
        """
        out = Path(directory)
        (out / "images").mkdir(parents=True, exist_ok=True)
        rows = io.StringIO()
        writer = csv.writer(rows, lineterminator="\n")
        writer.writerow(["image", "caption"])
        lines = []
        for item in self.corpus(split).values():
            rel = f"images/{item.id}.png"
            buf = io.BytesIO()
            item.image.save(buf, format="PNG")
            atomic_write_bytes(out / rel, buf.getvalue())
            for cap in item.captions:
                writer.writerow([rel, cap])
            lines.append(
                json.dumps(
                    {
                        "id": item.id,
                        "image": rel,
                        "captions": list(item.captions),
                        "labels": list(item.labels),
                    }
                )
            )
        atomic_write_bytes(out / "captions.csv", rows.getvalue().encode())
        atomic_write(out / "manifest.jsonl", lambda p: p.write_text("\n".join(lines) + "\n"))
        return out

    @cached_property
    def vocabulary(self) -> tuple[str, ...]:
        """Every word the world's texts use."""
        words = {"left", "middle", "right", "small", "large", *COLOURS, *SHAPES}
        return tuple(sorted(words))


def label_matrix(corpus: Corpus) -> np.ndarray:
    """Multi-hot labels of a shapes corpus: uint8 (n_items, 48) in :data:`LABELS` order."""
    index = {lab: i for i, lab in enumerate(LABELS)}
    out = np.zeros((len(corpus), len(LABELS)), dtype=np.uint8)
    for r, item in enumerate(corpus.values()):
        for lab in item.labels:
            if lab not in index:
                raise ValueError(f"item {item.id!r} has label {lab!r}, not a shapes label")
            out[r, index[lab]] = 1
    return out


_WORD = re.compile(r"[a-z]+")


def answer_question(scene: Scene, question: str) -> str:
    """Answer ``question`` about ``scene`` by keyword parsing (see :meth:`ShapesWorld.answer`)."""
    words = _WORD.findall(question.lower())
    if not words:
        return "I don't know"
    ws = set(words)
    singular = {w[:-1] if w.endswith("s") and w[:-1] in SHAPES else w for w in words}
    colours = [w for w in words if w in COLOURS]
    shapes = [w for w in singular if w in SHAPES]
    positions = [p for p in POSITIONS if p in ws or (p == "middle" and "center" in ws)]
    objs = list(scene.objects)

    def select() -> list[ShapeObject]:
        sel = objs
        if positions:
            sel = [o for o in sel if o.position in positions]
        if shapes:
            sel = [o for o in sel if o.shape in shapes]
        if colours and not ({"colour", "color"} & ws):
            sel = [o for o in sel if o.colour in colours]
        return sel

    if "how" in ws and "many" in ws:
        sel = objs
        if shapes:
            sel = [o for o in sel if o.shape in shapes]
        if colours:
            sel = [o for o in sel if o.colour in colours]
        return _NUMBERS.get(len(sel), "none") if sel else "none"
    if words[0] in ("is", "are", "any") or "there" in ws and words[0] in ("is", "are"):
        sel = select()
        return "yes" if sel else "no"
    sel = select()
    if not sel or not (shapes or colours or positions):
        return "I don't know"
    if len(sel) > 1:
        if {"colour", "color"} & ws:
            return _join([o.colour for o in sel])
        if "shape" in ws or "what" in ws:
            return _join([_article(o.shape) for o in sel])
        return "I don't know"
    o = sel[0]
    if {"colour", "color"} & ws:
        return o.colour
    if {"big", "size", "large", "small"} & ws:
        return o.size
    if "where" in ws:
        return "in the middle" if o.position == "middle" else f"on the {o.position}"
    if "shape" in ws or "what" in ws:
        return _article(o.shape)
    return "I don't know"


__all__ = [
    "caption_signature",
    "COLOURS",
    "LABELS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Scene",
    "ShapeObject",
    "ShapesConfig",
    "ShapesWorld",
    "answer_question",
    "captions_for",
    "label_matrix",
    "render_scene",
]
