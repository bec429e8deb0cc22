"""Learning-rate schedules as multipliers of the peak rate, per optimisation step.

The paper's (Goyal et al.'s) recipe: peak = base_lr * global_batch / 256, reached by linear warm-up
from base_lr, then halved at equally spaced steps (20 halvings in all over training). Cosine decay is
the common alternative for fine-tuning.
"""

from __future__ import annotations

import math

SCHEDULES = ("step", "cosine", "constant")
INTERPOLATIONS = ("log", "linear")
# The paper's two extremes of schedule length: 120 epochs over ImageNet's 1.2M images, 2 over 3.5B.
PAPER_EXTREMES = ((1.2e6, 120.0), (3.5e9, 2.0))


def paper_schedule_images(corpus_images: int, interpolation: str = "log", extremes=PAPER_EXTREMES) -> int:
    """Images to process when pretraining on `corpus_images`: epochs interpolated between two extremes
    ((images, epochs) pairs; the paper's by default), linearly in the corpus size N or in log N, and held
    at the extremes outside them."""
    (n0, e0), (n1, e1) = extremes
    if interpolation == "log":
        t = (math.log(corpus_images) - math.log(n0)) / (math.log(n1) - math.log(n0))
    elif interpolation == "linear":
        t = (corpus_images - n0) / (n1 - n0)
    else:
        raise ValueError(f"task.interpolation={interpolation}: valid are {', '.join(INTERPOLATIONS)}")
    epochs = e0 + (e1 - e0) * min(1.0, max(0.0, t))
    return round(epochs * corpus_images)


def peak_lr(base_lr: float, global_batch: int) -> float:
    """Linear scaling rule: base_lr is the rate for a batch of 256 images."""
    return base_lr * global_batch / 256


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, warmup_start: float, schedule: str,
                  halvings: int = 20) -> float:  # fmt: skip
    """Multiplier of the peak lr at `step`; warm-up goes linearly from `warmup_start` to 1."""
    if step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "step":
        return 0.5 ** min(halvings, math.floor(progress * (halvings + 1)))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"optim.schedule={schedule}: valid are {', '.join(SCHEDULES)}")
