"""Classic shallow cross-modal hashing baselines, measured in the same run as CMSEH.

* :class:`CMFH`: Collective Matrix Factorization Hashing (Ding, Guo and Zhou, CVPR 2014):
  both modalities of a pair are factorised onto one shared latent code ``V``
  (``X_m ~ U_m V``), with linear hash functions ``P_m`` learned to predict ``V`` from each
  modality so that unseen items can be coded; codes are ``sign(P_m x - median)``.
  Unsupervised (no labels).
* :class:`CCAITQ`: CCA projection to a common space, then ITQ rotation (Gong and Lazebnik),
  the standard linear cross-modal baseline.

Both work on centred features (the training mean is removed from every set, as the
reference implementations do) and are closed-form / alternating least squares in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _solve_right(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ inv(b)`` for a symmetric positive-definite ``b``."""
    return np.linalg.solve(b, a.T).T


def _itq(v: np.ndarray, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """ITQ rotation ``R`` (k, k) minimising ``||sign(vR) - vR||`` for centred ``v`` (n, k)."""
    k = v.shape[1]
    r, _ = np.linalg.qr(rng.standard_normal((k, k)))
    for _ in range(iterations):
        b = np.where(v @ r >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(b.T @ v)
        r = (u @ wt).T
    return r


def pca_itq(x: np.ndarray, bits: int, *, iterations: int = 50, seed: int = 0) -> np.ndarray:
    """PCA to ``bits`` dimensions followed by the ITQ rotation (Gong and Lazebnik 2011).

    Args:
        x: Centred features (n, d).
        bits: Code length, at most ``min(n, d)``.
        iterations: ITQ iterations.
        seed: Seed of the initial rotation.

    Returns:
        The ``(d, bits)`` projection: codes are ``sign(x @ projection)``.
    """
    if not 0 < bits <= min(x.shape):
        raise ValueError(f"PCA-ITQ gives at most min(n, d) = {min(x.shape)} bits; asked for {bits}")
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    pca = vt[:bits].T
    rot = _itq(x @ pca, iterations, np.random.default_rng(seed))
    return (pca @ rot).astype(np.float32)


@dataclass
class CMFH:
    """Collective Matrix Factorization Hashing.

    Args:
        bits: Code length.
        lam: Weight of the image reconstruction (text gets ``1 - lam``).
        mu: Weight of the hash-function (projection) terms.
        gamma: Ridge regularisation.
        iterations: Alternating updates.
        seed: Initialisation seed.
    """

    bits: int
    lam: float = 0.5
    mu: float = 100.0
    gamma: float = 0.01
    iterations: int = 50
    seed: int = 0
    mean_: list[np.ndarray] = field(default_factory=list, repr=False)
    proj_: list[np.ndarray] = field(default_factory=list, repr=False)
    thresh_: list[np.ndarray] = field(default_factory=list, repr=False)

    def fit(self, image: np.ndarray, text: np.ndarray) -> CMFH:
        """Learn the factorisation and hash functions from paired features (n, d_m)."""
        if len(image) != len(text):
            raise ValueError(f"{len(image)} image rows but {len(text)} text rows")
        if not 0.0 < self.lam < 1.0:
            raise ValueError(f"lam must be in (0, 1), got {self.lam}")
        rng = np.random.default_rng(self.seed)
        self.mean_ = [image.mean(0), text.mean(0)]
        x1 = (image - self.mean_[0]).T.astype(np.float64)  # (d1, n)
        x2 = (text - self.mean_[1]).T.astype(np.float64)
        k, n = self.bits, x1.shape[1]
        v = rng.standard_normal((k, n))
        eye_k = np.eye(k)
        g = self.gamma
        c1 = x1 @ x1.T + (g / self.mu) * np.eye(x1.shape[0])
        c2 = x2 @ x2.T + (g / self.mu) * np.eye(x2.shape[0])
        for _ in range(self.iterations):
            vvt = v @ v.T
            u1 = _solve_right(x1 @ v.T, vvt + (g / self.lam) * eye_k)
            u2 = _solve_right(x2 @ v.T, vvt + (g / (1 - self.lam)) * eye_k)
            p1 = _solve_right(v @ x1.T, c1)
            p2 = _solve_right(v @ x2.T, c2)
            lhs = self.lam * u1.T @ u1 + (1 - self.lam) * u2.T @ u2 + (2 * self.mu + g) * eye_k
            rhs = self.lam * u1.T @ x1 + (1 - self.lam) * u2.T @ x2 + self.mu * (p1 @ x1 + p2 @ x2)
            v = np.linalg.solve(lhs, rhs)
        self.proj_ = [p1, p2]
        # Median thresholds balance every bit on the training set.
        self.thresh_ = [np.median(p1 @ x1, axis=1), np.median(p2 @ x2, axis=1)]
        return self

    def _codes(self, x: np.ndarray, m: int) -> np.ndarray:
        if not self.proj_:
            raise RuntimeError("CMFH is not fitted; call fit() first")
        z = self.proj_[m] @ (x - self.mean_[m]).T - self.thresh_[m][:, None]
        return np.where(z.T >= 0, 1, -1).astype(np.int8)

    def image_codes(self, image: np.ndarray) -> np.ndarray:
        """±1 codes (n, bits) of image features."""
        return self._codes(image, 0)

    def text_codes(self, text: np.ndarray) -> np.ndarray:
        """±1 codes (n, bits) of text features."""
        return self._codes(text, 1)


@dataclass
class CCAITQ:
    """CCA to a ``bits``-dimensional common space, then an ITQ rotation shared by both.

    Args:
        bits: Code length (at most the smaller feature dimension).
        reg: Ridge added to each covariance (relative to its trace / d).
        iterations: ITQ iterations.
        seed: Seed of the initial rotation.
    """

    bits: int
    reg: float = 1e-3
    iterations: int = 50
    seed: int = 0
    mean_: list[np.ndarray] = field(default_factory=list, repr=False)
    proj_: list[np.ndarray] = field(default_factory=list, repr=False)

    def fit(self, image: np.ndarray, text: np.ndarray) -> CCAITQ:
        """Learn both projections and the rotation from paired features (n, d_m)."""
        if len(image) != len(text):
            raise ValueError(f"{len(image)} image rows but {len(text)} text rows")
        if self.bits > min(image.shape[1], text.shape[1]):
            raise ValueError(
                f"CCA gives at most min(d_image, d_text) = "
                f"{min(image.shape[1], text.shape[1])} directions; asked for {self.bits} bits"
            )
        self.mean_ = [image.mean(0), text.mean(0)]
        x = (image - self.mean_[0]).astype(np.float64)
        y = (text - self.mean_[1]).astype(np.float64)
        n = len(x)

        def whiten(c: np.ndarray) -> np.ndarray:
            c = c + self.reg * np.trace(c) / len(c) * np.eye(len(c))
            w, q = np.linalg.eigh(c)
            return q @ np.diag(1 / np.sqrt(w)) @ q.T

        wx, wy = whiten(x.T @ x / n), whiten(y.T @ y / n)
        u, _, vt = np.linalg.svd(wx @ (x.T @ y / n) @ wy)
        px, py = wx @ u[:, : self.bits], wy @ vt.T[:, : self.bits]
        r = _itq(np.vstack([x @ px, y @ py]), self.iterations, np.random.default_rng(self.seed))
        self.proj_ = [px @ r, py @ r]
        return self

    def _codes(self, x: np.ndarray, m: int) -> np.ndarray:
        if not self.proj_:
            raise RuntimeError("CCAITQ is not fitted; call fit() first")
        return np.where((x - self.mean_[m]) @ self.proj_[m] >= 0, 1, -1).astype(np.int8)

    def image_codes(self, image: np.ndarray) -> np.ndarray:
        """±1 codes (n, bits) of image features."""
        return self._codes(image, 0)

    def text_codes(self, text: np.ndarray) -> np.ndarray:
        """±1 codes (n, bits) of text features."""
        return self._codes(text, 1)


__all__ = ["CCAITQ", "CMFH"]
