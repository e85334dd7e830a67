"""Index the shapes world with the embedded model and search it by text, image and edit.

Run: .venv/bin/python examples/quickstart.py
"""

from __future__ import annotations

from vistrieve import Query
from vistrieve.data.shapes import ShapesWorld
from vistrieve.encoders import create_encoder
from vistrieve.retrievers.dense import DenseRetriever


def main() -> None:
    world = ShapesWorld(seed=0, n_train=0, n_val=0, n_test=300)
    corpus = world.corpus("test")
    retriever = DenseRetriever.build(create_encoder("shapes-clip", progress=False), corpus)

    for hit in retriever.retrieve([Query(text="a red circle and a blue square")], k=3)[0]:
        print(f"{hit.score:+.3f} {hit.id} {hit.metadata['caption']}")

    probe = corpus["test-00007"]
    print("\nimages like:", probe.captions[0])
    for hit in retriever.retrieve([Query(image=probe.image)], k=3)[0]:
        print(f"{hit.score:+.3f} {hit.id} {hit.metadata['caption']}")

    example = world.composed("test").examples[0]
    print(
        "\nreference + edit:", corpus[example.reference_id].captions[0], "+", example.modification
    )
    for hit in retriever.retrieve([example.query(corpus)], k=3)[0]:
        mark = "*" if hit.id in example.target_ids else " "
        print(f"{mark} {hit.score:+.3f} {hit.id} {hit.metadata['caption']}")


if __name__ == "__main__":
    main()
