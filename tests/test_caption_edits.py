"""Composed-retrieval sets mined from one-word caption edits."""

from __future__ import annotations

import pytest

from vistrieve.evals.caption_edits import caption_edit, caption_edit_queries, content_words
from vistrieve.types import Corpus, Item


def test_content_words_drop_function_words() -> None:
    assert content_words("Two dogs wrestle in the grass .") == {"two", "dogs", "wrestle", "grass"}


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("Two dogs wrestle in the grass .", "Two dogs stand in the grass .", ("wrestle", "stand")),
        ("A black dog swims", "a brown dog swims in the water", None),  # two words added
        ("People sit on benches .", "two people sit on a bench .", None),  # two words added
        ("A man sits on a bench", "A man sits on benches", None),  # forms of one word
        ("A dog runs", "A dog running", None),  # forms of one word
        ("A red car", "A blue car", None),  # only one shared content word
        ("A dog in the snow", "A dog in the snow", None),  # no difference
    ],
)
def test_caption_edit(source: str, target: str, expected: tuple[str, str] | None) -> None:
    assert caption_edit(source, target) == expected


def test_caption_edit_min_shared() -> None:
    assert caption_edit("A red car", "A blue car", min_shared=1) == ("red", "blue")


def _corpus(rows: dict[str, list[str]]) -> Corpus:
    return Corpus([Item(id=i, image=f"{i}.jpg", captions=tuple(c)) for i, c in rows.items()])


def test_queries_group_targets_and_carry_references() -> None:
    refs = _corpus({"r1": ["two dogs wrestle in the grass", "dogs playing"], "r2": ["a cat"]})
    gallery = _corpus(
        {
            "g1": ["two dogs stand in the grass"],
            "g2": ["Two dogs stand in the grass .", "a photo"],
            "g3": ["two dogs wrestle in the snow"],
            "g4": ["a red bus"],
        }
    )
    data = caption_edit_queries(refs, gallery)
    by_mod = {ex.modification: ex for ex in data.examples}
    assert set(by_mod) == {"stand instead of wrestle", "snow instead of grass"}
    stand = by_mod["stand instead of wrestle"]
    assert stand.reference_id == "r1" and stand.target_ids == ("g1", "g2")
    assert stand.metadata["edit"] == ["wrestle", "stand"]
    assert by_mod["snow instead of grass"].target_ids == ("g3",)
    # The corpus is the gallery plus the references used (r2 was never a reference).
    assert set(data.corpus.ids) == {"g1", "g2", "g3", "g4", "r1"}
    q = stand.query(data.corpus)
    assert q.text == "stand instead of wrestle" and q.image == "r1.jpg"


def test_a_photo_is_never_its_own_target() -> None:
    same = _corpus({"a": ["two dogs wrestle in the grass", "two dogs stand in the grass"]})
    with pytest.raises(ValueError, match="exactly one content word"):
        caption_edit_queries(same, same)


def test_flickr8k_edits_keep_targets_held_out(shared_data: object) -> None:
    from pathlib import Path

    from vistrieve.evals.datasets import load_flickr8k, split_by_image

    train, test = split_by_image(load_flickr8k(Path(str(shared_data)) / "flickr8k-1k"), 800)
    data = caption_edit_queries(train, test)
    assert len(data.examples) >= 100
    assert all(set(ex.target_ids) <= set(test.ids) for ex in data.examples)
    assert all(ex.reference_id in train for ex in data.examples)
