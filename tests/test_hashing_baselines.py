"""Shallow cross-modal hashing baselines (CMFH, CCA-ITQ) on synthetic paired data."""

from __future__ import annotations

import numpy as np
import pytest

from vistrieve.evals.metrics import mean_average_precision
from vistrieve.hashing.baselines import CCAITQ, CMFH


def _paired(n: int = 600, classes: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(classes, size=n)
    centres = rng.standard_normal((classes, 8)) * 3
    latent = centres[labels] + rng.standard_normal((n, 8))
    image = latent @ rng.standard_normal((8, 40)) + 0.5 * rng.standard_normal((n, 40))
    text = latent @ rng.standard_normal((8, 24)) + 0.5 * rng.standard_normal((n, 24))
    return image, text, labels


@pytest.mark.parametrize("cls", [CMFH, CCAITQ])
def test_codes_retrieve_across_modalities(cls) -> None:  # type: ignore[no-untyped-def]
    image, text, labels = _paired()
    model = cls(16, iterations=20).fit(image[:400], text[:400])
    qi, dt = model.image_codes(image[400:]), model.text_codes(text[:400])
    assert qi.shape == (200, 16) and set(np.unique(qi)) <= {-1, 1}
    learned = mean_average_precision(
        qi, dt, labels[400:], labels[:400], top_k=None, code_format="sign"
    )
    rng = np.random.default_rng(1)
    rand = np.where(rng.standard_normal((600, 16)) > 0, 1, -1)
    chance = mean_average_precision(
        rand[400:], rand[:400], labels[400:], labels[:400], top_k=None, code_format="sign"
    )
    assert learned > chance + 0.25
    again = cls(16, iterations=20).fit(image[:400], text[:400])
    np.testing.assert_array_equal(again.image_codes(image[400:]), qi)  # seeded


def test_cmfh_bits_are_balanced_on_training_data() -> None:
    image, text, _ = _paired()
    codes = CMFH(16, iterations=10).fit(image, text).image_codes(image)
    assert np.all(np.abs(codes.mean(0)) < 0.05)


def test_errors() -> None:
    image, text, _ = _paired(50)
    with pytest.raises(RuntimeError, match="not fitted"):
        CMFH(8).image_codes(image)
    with pytest.raises(ValueError, match="50 image rows but 49"):
        CMFH(8).fit(image, text[:49])
    with pytest.raises(ValueError, match="at most min"):
        CCAITQ(32).fit(image, text)


def test_pca_itq_is_an_orthonormal_projection_that_lowers_quantisation_error() -> None:
    from vistrieve.hashing.baselines import pca_itq

    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16))
    x -= x.mean(0)
    p = pca_itq(x, 8, seed=1)
    assert p.shape == (16, 8)
    np.testing.assert_allclose(p.T @ p, np.eye(8), atol=1e-5)
    np.testing.assert_array_equal(p, pca_itq(x, 8, seed=1))
    # ITQ's objective: the rotation brings x @ p closer to its sign than plain PCA does
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    pca = x @ vt[:8].T
    v = x @ p
    assert np.linalg.norm(np.sign(v) - v) < np.linalg.norm(np.sign(pca) - pca)
    with pytest.raises(ValueError, match="asked for 32"):
        pca_itq(x, 32)
