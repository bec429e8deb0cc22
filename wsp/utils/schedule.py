"""Learning-rate schedules as multipliers of the peak rate, per optimisation step, and the paper's rule
for how long to pretrain.

The paper's (Goyal et al.'s) recipe: peak = base_lr * global_batch / 256, reached by linear warm-up
from base_lr, then halved at equally spaced steps (20 halvings in all over training). Cosine decay is
the common alternative for fine-tuning.
"""

from __future__ import annotations

import math

SCHEDULES = ("step", "cosine", "constant")
INTERPOLATIONS = ("linear", "log")
# The paper's two ends of the schedule rule, as (corpus images, epochs): 120 epochs over ImageNet's 1.2M
# images (1.44e8 images processed) and 2 epochs over 3.5B (7e9 images processed).
PAPER_EXTREMES = ((1.2e6, 120.0), (3.5e9, 2.0))


def paper_schedule_images(corpus_images: int, interpolation: str = "linear", extremes=PAPER_EXTREMES) -> int:
    """Images to process when pretraining on `corpus_images` (N) by the paper's rule: the images processed
    are fixed at two ends ((N, epochs) pairs, the paper's by default) and interpolated between them,
    linearly in N (`linear`, the paper's "linear interpolation") or log(images) linearly in log N (`log`).
    Outside the ends the nearer end's epochs apply (120 epochs below 1.2M images, 2 above 3.5B), so the
    rule is continuous and never decreases in N when the ends' images processed do not."""
    (n0, e0), (n1, e1) = extremes
    if corpus_images <= n0:
        return round(e0 * corpus_images)
    if corpus_images >= n1:
        return round(e1 * corpus_images)
    i0, i1 = n0 * e0, n1 * e1
    if interpolation == "linear":
        return round(i0 + (i1 - i0) * (corpus_images - n0) / (n1 - n0))
    if interpolation == "log":
        t = math.log(corpus_images / n0) / math.log(n1 / n0)
        return round(math.exp(math.log(i0) + t * math.log(i1 / i0)))
    raise ValueError(f"task.interpolation={interpolation}: valid are {', '.join(INTERPOLATIONS)}")


def peak_lr(base_lr: float, global_batch: int) -> float:
    """Linear scaling rule: base_lr is the rate for a batch of 256 images."""
    return base_lr * global_batch / 256


def lr_multiplier(done: int, *, total: int, warmup: int, warmup_start: float, schedule: str,
                  halvings: int = 20) -> float:  # fmt: skip
    """Multiplier of the peak lr after `done` of `total` (images processed, or steps); warm-up goes
    linearly from `warmup_start` to 1 over the first `warmup`."""
    if done < warmup:
        return warmup_start + (1.0 - warmup_start) * done / warmup
    progress = (done - warmup) / max(1, total - warmup)
    if schedule == "step":
        return 0.5 ** min(halvings, math.floor(progress * (halvings + 1)))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"optim.schedule={schedule}: valid are {', '.join(SCHEDULES)}")
