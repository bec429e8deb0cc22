"""Label noise, the paper's protocol: with probability p each label of an image is replaced by one drawn
from the marginal label distribution, excluding the label replaced. Seeded per post key, so the same
post gets the same noise whatever the order or the worker that writes it."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NoisyLabels:
    labels: list[int]  # sorted, deduplicated: what the image is trained on
    replaced: list[int]  # one per original label: itself, or what replaced it


class LabelNoise:
    def __init__(self, p: float, marginal: np.ndarray, seed: int):
        if not 0 <= p <= 1:
            raise ValueError(f"corpus.label_noise={p}: must be in [0, 1]")
        if np.count_nonzero(marginal) < 2:
            raise ValueError("label noise needs at least two labels to swap between")
        self.p, self.seed = p, seed
        self.cumulative = np.cumsum(marginal / marginal.sum())

    def apply(self, labels: list[int], key: str) -> NoisyLabels:
        rng = np.random.default_rng([self.seed, zlib.crc32(key.encode())])
        replaced = [self._draw_other(label, rng) if rng.random() < self.p else label for label in labels]
        return NoisyLabels(sorted(set(replaced)), replaced)

    def _draw_other(self, label: int, rng: np.random.Generator) -> int:
        # Rejection: drawing from the marginal until not `label` samples the marginal conditioned on != label.
        while True:
            other = int(np.searchsorted(self.cumulative, rng.random() * self.cumulative[-1], side="right"))
            if other != label and other < len(self.cumulative):
                return other
