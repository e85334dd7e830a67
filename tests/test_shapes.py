from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from vistrieve.data.shapes import (
    COLOURS,
    LABELS,
    SHAPES,
    Scene,
    ShapesConfig,
    ShapesWorld,
    label_matrix,
)

SMALL = dict(n_train=60, n_val=20, n_test=80, n_composed=30, n_dialogs=20)


@pytest.fixture(scope="module")
def world() -> ShapesWorld:
    return ShapesWorld(seed=3, **SMALL)


def test_sizes_of_the_vocabulary() -> None:
    assert len(SHAPES) >= 6 and len(COLOURS) >= 8 and len(LABELS) == len(SHAPES) * len(COLOURS)


def test_determinism_and_seed_dependence(world: ShapesWorld) -> None:
    again = ShapesWorld(seed=3, **SMALL)
    a, b = world.corpus("test"), again.corpus("test")
    assert a.ids == b.ids
    for x, y in zip(a.values(), b.values(), strict=True):
        assert x.captions == y.captions and x.labels == y.labels
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
    assert world.composed("test").examples == again.composed("test").examples
    assert world.dialogs("test").examples == again.dialogs("test").examples
    other = ShapesWorld(seed=4, **SMALL).corpus("test")
    assert [i.captions for i in other.values()] != [i.captions for i in a.values()]


def test_test_split_does_not_depend_on_train_size() -> None:
    a = ShapesWorld(seed=0, n_train=10, n_val=0, n_test=40).corpus("test")
    b = ShapesWorld(seed=0, n_train=200, n_val=5, n_test=40).corpus("test")
    assert [i.captions for i in a.values()] == [i.captions for i in b.values()]


def test_captions_and_labels_follow_the_scene(world: ShapesWorld) -> None:
    corpus = world.corpus("train")
    for item in corpus.values():
        scene = Scene.from_dict(item.metadata["scene"])
        assert len(item.captions) == 5 and len(set(item.captions)) == 5
        assert 1 <= len(scene.objects) <= 3
        for cap in item.captions:
            assert cap == cap.lower() and not cap.endswith(".")
            for o in scene.objects:
                assert o.colour in cap and o.shape in cap
        assert item.labels == scene.labels
        assert np.asarray(item.image).shape == (64, 64, 3)
    m = label_matrix(corpus)
    assert m.shape == (len(corpus), len(LABELS)) and m.dtype == np.uint8
    first = next(iter(corpus.values()))
    assert {LABELS[j] for j in np.flatnonzero(m[0])} == set(first.labels)


def test_binding_twins_exist() -> None:
    corpus = ShapesWorld(seed=0, n_train=0, n_val=0, n_test=300).corpus("test")
    keys = {}
    for item in corpus.values():
        scene = Scene.from_dict(item.metadata["scene"])
        keys[tuple((o.shape, o.slot) for o in scene.objects)] = keys.get(
            tuple((o.shape, o.slot) for o in scene.objects), []
        ) + [tuple(o.colour for o in scene.objects)]
    swapped = 0
    for colours in keys.values():
        for c in colours:
            if len(c) == 2 and (c[1], c[0]) in colours and c[0] != c[1]:
                swapped += 1
    assert swapped >= 10  # same shapes and places, colours exchanged


def test_holdout_combos() -> None:
    held = (("red", "circle"), ("blue", "star"))
    w = ShapesWorld(seed=1, holdout_combos=held, **SMALL)
    assert w.splits == ("train", "val", "test", "heldout")
    for split in ("train", "val"):
        for item in w.corpus(split).values():
            assert not {"red circle", "blue star"} & set(item.labels)
    heldout = w.corpus("heldout")
    assert len(heldout) >= SMALL["n_test"]
    assert all({"red circle", "blue star"} & set(i.labels) for i in heldout.values())


def test_composed_targets_exist_and_match_the_edit(world: ShapesWorld) -> None:
    data = world.composed("test")
    assert len(data.examples) == 30
    kinds = set()
    for ex in data.examples:
        kinds.add(ex.metadata["edit"])
        ref = world.scene(ex.reference_id)
        targets = [world.scene(t) for t in ex.target_ids]
        assert all(t.key() == targets[0].key() for t in targets)
        assert targets[0].key() != ref.key()
        assert all(t in data.corpus for t in ex.target_ids)
        q = ex.query(data.corpus)
        assert q.kind == "composed" and q.text == ex.modification
    assert len(kinds) >= 4


def test_dialogs_agree_with_the_answerer(world: ShapesWorld) -> None:
    data = world.dialogs("test")
    assert len(data.examples) == 20
    for ex in data.examples:
        assert 1 <= len(ex.turns) <= 5
        assert ex.target_id in data.corpus
        for t in ex.turns:
            assert world.answer(ex.target_id, t.question) == t.answer
        assert ex.query(0).as_text() == ex.caption


def test_answerer_free_form() -> None:
    w = ShapesWorld(seed=0, n_train=0, n_val=0, n_test=1)
    scene = Scene.from_dict(w.corpus("test")["test-00000"].metadata["scene"])
    o = scene.objects[0]
    assert w.answer("test-00000", f"What colour is the {o.shape}?").startswith(o.colour)
    assert w.answer("test-00000", f"is there a {o.colour} {o.shape}?") == "yes"
    absent = next(s for s in SHAPES if s not in {x.shape for x in scene.objects})
    assert w.answer("test-00000", f"Is there a {absent}?") == "no"
    assert w.answer("test-00000", "How many objects are there?") in ("one", "two", "three")
    assert w.answer("test-00000", "what is the meaning of life?") == "I don't know"
    assert w.answer("test-00000", "") == "I don't know"
    with pytest.raises(KeyError):
        w.answer("nope-1", "is there a star?")


def test_export_round_trip(world: ShapesWorld, tmp_path: Path) -> None:
    from vistrieve.data.manifest import corpus_from_manifest

    out = world.export("val", tmp_path / "val")
    corpus = world.corpus("val")
    with open(out / "captions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 * len(corpus)
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == corpus.ids
    back = corpus_from_manifest(out / "manifest.jsonl").corpus
    assert back.ids == corpus.ids
    assert [i.captions for i in back.values()] == [i.captions for i in corpus.values()]


@pytest.mark.parametrize(
    "bad",
    [
        {"n_train": -1},
        {"min_objects": 3, "max_objects": 2},
        {"max_objects": 4},
        {"swap_fraction": 1.5},
        {"holdout_combos": (("pink", "circle"),)},
        {"image_size": 8},
    ],
)
def test_bad_config(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ShapesWorld(**bad)


def test_config_round_trip_and_unknown_split(world: ShapesWorld) -> None:
    cfg = ShapesConfig(seed=5, holdout_combos=(("red", "circle"),))
    assert ShapesConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown split 'heldout'"):
        world.corpus("heldout")


def test_caption_signature_decides_which_scenes_a_caption_describes() -> None:
    from vistrieve.data.shapes import Scene, ShapeObject, caption_signature

    a = Scene((ShapeObject(0, "red", "circle", "small"), ShapeObject(2, "blue", "square", "large")))
    moved = Scene(
        (ShapeObject(1, "red", "circle", "small"), ShapeObject(2, "blue", "square", "large"))
    )
    swapped = Scene(
        (ShapeObject(0, "blue", "circle", "small"), ShapeObject(2, "red", "square", "large"))
    )
    mirrored = Scene(
        (ShapeObject(0, "blue", "square", "large"), ShapeObject(2, "red", "circle", "small"))
    )
    plain = "a red circle and a blue square"
    assert caption_signature(a, plain) == caption_signature(moved, plain)
    assert caption_signature(a, plain) == caption_signature(mirrored, plain)
    assert caption_signature(a, plain) != caption_signature(swapped, plain)  # binding
    rel = "a red circle to the left of a blue square"
    assert caption_signature(a, rel) == caption_signature(moved, rel)
    assert caption_signature(a, rel) != caption_signature(mirrored, rel)
    placed = "a small red circle on the left and a large blue square on the right"
    assert caption_signature(a, placed) != caption_signature(moved, placed)
    sized = "a picture of a small red circle and a large blue square"
    assert caption_signature(a, sized) == caption_signature(moved, sized)
