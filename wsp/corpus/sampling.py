"""Resampling schemes (the paper's Section 3): how often each image is drawn during pretraining.

Label frequencies are Zipfian. A scheme gives each label l a target sampling mass m_l proportional to
f_l ** alpha, with f_l the label's (fractional) image count: alpha = 1 natural, 0.5 square-root (the
paper's default), 0 uniform. An image with k labels contributes 1/k to each label's f_l, and its
sampling weight is w_i = sum over its labels of (1/k) * m_l / f_l. The weights sum to one; drawing
images by weight gives each label exactly its mass m_l when images carry one label, and close to it
when some carry several (an image's weight averages the shares of its labels).
"""

from __future__ import annotations

import numpy as np

SCHEME_EXPONENTS = {"natural": 1.0, "sqrt": 0.5, "uniform": 0.0}


def label_masses(frequencies: np.ndarray, scheme: str) -> np.ndarray:
    """Target sampling mass per label (sums to 1); labels with zero frequency get zero mass."""
    if scheme not in SCHEME_EXPONENTS:
        raise ValueError(f"resampling scheme {scheme!r}: valid are {', '.join(SCHEME_EXPONENTS)}")
    frequencies = np.asarray(frequencies, dtype=np.float64)
    mass = np.zeros_like(frequencies)
    seen = frequencies > 0
    mass[seen] = frequencies[seen] ** SCHEME_EXPONENTS[scheme]
    return mass / mass.sum()


class ImageWeights:
    """Per-image sampling weight from its labels, for one scheme over one corpus's label frequencies."""

    def __init__(self, frequencies: np.ndarray, scheme: str):
        frequencies = np.asarray(frequencies, dtype=np.float64)
        self.per_label = np.divide(
            label_masses(frequencies, scheme),
            frequencies,
            out=np.zeros_like(frequencies),
            where=frequencies > 0,
        )

    def __call__(self, labels: list[int]) -> float:
        return float(self.per_label[labels].mean()) if labels else 0.0
