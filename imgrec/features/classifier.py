"""The linear decision boundary (softmax regression, fitted in NumPy) and the
honest verdict on what it learned."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgrec.features.measure import FEATURE_NAMES, FeatureError, extract_features_batch


@dataclass
class LinearClassifier:
    """Multinomial logistic (softmax) regression on standardised features, with an
    L2 penalty on the weights: one straight-line boundary between each pair of classes."""

    feature_names: list[str]
    class_names: list[str]
    mean: np.ndarray  # (F,) the standardiser: z = (x - mean) / scale
    scale: np.ndarray  # (F,)
    weights: np.ndarray  # (F, K), on standardised features
    bias: np.ndarray  # (K,)
    l2: float = 1e-3
    iterations: int = 0

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        *,
        feature_names: Sequence[str],
        class_names: Sequence[str],
        l2: float = 1e-3,
        max_iter: int = 3000,
        tol: float = 1e-6,
    ) -> LinearClassifier:
        """Full-batch accelerated gradient descent on the mean cross-entropy + l2/2·|W|².

        The problem is convex and the features fit in memory, so this converges
        to the one optimum: deterministic, no learning rate to tune."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        k = len(class_names)
        if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
            raise FeatureError(f"need features (N, F) and N labels with N > 0, got {x.shape} and {y.shape}")
        if l2 < 0:
            raise FeatureError(f"l2 must be >= 0, got {l2}")
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-12] = 1.0  # a constant feature: leave it at zero, never divide by zero
        z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])  # last column: the bias
        onehot = np.eye(k)[y]
        # Softmax cross-entropy has curvature <= 1/2 * largest eigenvalue of zᵀz/n:
        # its inverse is a step size that never overshoots.
        lipschitz = 0.5 * np.linalg.norm(z, 2) ** 2 / len(z) + l2
        step = 1.0 / lipschitz
        penalty = np.ones((z.shape[1], 1))
        penalty[-1] = 0.0  # the bias is not shrunk

        def gradient(theta: np.ndarray) -> np.ndarray:
            return z.T @ (_softmax(z @ theta) - onehot) / len(z) + l2 * penalty * theta

        theta = np.zeros((z.shape[1], k))
        lookahead, momentum, it = theta, 1.0, 0
        for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
            g = gradient(lookahead)
            if np.abs(g).max() < tol:
                theta = lookahead  # converged here: this is the optimum
                break
            new = lookahead - step * g
            next_momentum = (1 + math.sqrt(1 + 4 * momentum**2)) / 2
            lookahead = new + (momentum - 1) / next_momentum * (new - theta)
            theta, momentum = new, next_momentum
        return cls(
            feature_names=list(feature_names),
            class_names=list(class_names),
            mean=mean,
            scale=scale,
            weights=theta[:-1],
            bias=theta[-1],
            l2=float(l2),
            iterations=it,
        )

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return z @ self.weights + self.bias

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return _softmax(self.decision_function(x))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.decision_function(x).argmax(axis=1)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Class indices of uint8 N×H×W×3 images."""
        feats = extract_features_batch(images)[:, [FEATURE_NAMES.index(n) for n in self.feature_names]]
        return self.predict(feats)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_names": self.feature_names,
            "class_names": self.class_names,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "bias": self.bias.tolist(),
            "l2": self.l2,
            "iterations": self.iterations,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearClassifier:
        arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ("mean", "scale", "weights", "bias")}
        return cls(
            feature_names=list(data["feature_names"]),
            class_names=list(data["class_names"]),
            l2=float(data.get("l2", 0.0)),
            iterations=int(data.get("iterations", 0)),
            **arrays,
        )


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- verdicts


# "Clearly above chance": at least this much better than always guessing the
# most common class, and unlikely to be luck (one-sided binomial test).
MARGIN = 0.15
P_VALUE = 0.01
GOOD_ACCURACY = 0.95


def binomial_p_value(correct: int, n: int, chance: float) -> float:
    """P(at least ``correct`` of ``n`` right by guessing with success rate ``chance``)."""
    if n <= 0 or correct <= 0:
        return 1.0
    if chance <= 0:
        return 0.0
    if chance >= 1:
        return 1.0
    log_p, log_q = math.log(chance), math.log1p(-chance)
    terms = [
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q
        for k in range(correct, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def judge(accuracy: float, chance: float, n: int) -> tuple[bool, str, float]:
    """``(separated, verdict, p_value)`` for an accuracy measured on ``n`` held-out images."""
    p = binomial_p_value(round(accuracy * n), n, chance)
    numbers = f"accuracy {accuracy:.2f} vs chance {chance:.2f} on {n} images"
    if accuracy < chance + MARGIN or p >= P_VALUE:
        return False, f"hand-made features do not separate these classes: {numbers} — try a CNN", p
    if accuracy >= GOOD_ACCURACY:
        return True, f"hand-made features separate these classes: {numbers}", p
    return True, f"hand-made features partly separate these classes: {numbers} — a CNN should do better", p
