"""Evaluate two retrievers side by side on the shapes world and write a report.

Run: .venv/bin/python examples/compare_methods.py  (writes runs/compare/)
"""

from __future__ import annotations

from vistrieve.data.shapes import ShapesWorld
from vistrieve.encoders import create_encoder
from vistrieve.evals.runner import ComposedEvaluator, RetrievalEvaluator, evaluate
from vistrieve.retrievers.dense import DenseRetriever


def main() -> None:
    world = ShapesWorld(seed=0, n_train=0, n_val=300, n_test=0, n_composed=100)
    corpus = world.corpus("val")
    methods = {
        "random tiny CLIP": DenseRetriever.build(create_encoder("clip-tiny-test"), corpus),
        "shapes-clip": DenseRetriever.build(create_encoder("shapes-clip"), corpus),
        "shapes-clip, image only": DenseRetriever.build(
            create_encoder("shapes-clip"), corpus, composed_mode="image"
        ),
    }
    evaluators = [
        RetrievalEvaluator(corpus, name="val"),
        ComposedEvaluator(world.composed("val"), name="cir", ks=(1, 5, 10)),
    ]
    report = evaluate(methods, evaluators, title="shapes val")
    report.save("runs/compare")
    print(report.to_markdown())


if __name__ == "__main__":
    main()
