"""Linear evaluation (the paper's feature-transfer protocol): a frozen backbone in eval mode, its pooled
features, and an L2-regularised multinomial logistic regression whose regularisation strength is chosen
on a held-out part of the training set, then refitted on all of it.

Out of core: the fit is full-batch L-BFGS whose objective and gradient are summed over the features a
chunk at a time (a cached shard, moved to the fitting device), so memory holds one chunk, the weights and
L-BFGS's history, never the whole split. Standardisation is folded into the weights (x @ (W/std)^T + b -
(W/std) mean), so no standardised copy is made. The grid is swept from the strongest regulariser down,
each fit starting from the previous solution, and the refit on all rows from the chosen one: the same
optimum (the objective is convex), reached in fewer passes over the data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# L-BFGS pairs kept, as scipy's default: 2 x 10 x classes x dims floats (1.5 GB at 9k classes x 2048)
LBFGS_HISTORY = 10


class InMemoryFeatures:
    """Features held in memory (small sets, tests), read in chunks like a cached FeatureSet stage."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, chunk_rows: int = 65_536):
        self.features, self.labels, self.chunk_rows = features, labels, chunk_rows

    def __len__(self) -> int:
        return len(self.labels)

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, len(self.features), self.chunk_rows):
            yield start, self.features[start : start + self.chunk_rows]


class StageFeatures:
    """One stage of a cached FeatureSet (wsp.models.features), streamed shard by shard."""

    def __init__(self, feature_set, stage: str):
        self.feature_set, self.stage, self.labels = feature_set, stage, feature_set.labels

    def __len__(self) -> int:
        return len(self.labels)

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        return self.feature_set.chunks(self.stage)


def _rows(features, rows: torch.Tensor | None, device: torch.device, dtype: torch.dtype = torch.float32):
    """(features as `dtype`, labels) on `device` per chunk, restricted to the `rows` mask."""
    for start, x in features.chunks():
        y = features.labels[start : start + len(x)]
        if rows is not None:
            keep = rows[start : start + len(x)]
            x, y = x[keep], y[keep]
        if len(y):
            yield x.to(device, non_blocking=True).to(dtype), y.to(device)


@dataclass
class LinearProbe:
    weight: torch.Tensor  # (classes, features), applied to standardised features
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    l2: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        scaled = self.weight / self.std
        return features @ scaled.T + (self.bias - scaled @ self.mean)


def standardisation(features, rows: torch.Tensor | None, device: torch.device):
    """Mean and std (unbiased) of the selected rows, in float64 sums over the chunks."""
    count, total, squares = 0, 0.0, 0.0
    for x, _ in _rows(features, rows, device):
        x = x.double()
        count, total, squares = count + len(x), total + x.sum(0), squares + x.pow(2).sum(0)
    mean = total / count
    var = (squares - count * mean.pow(2)) / max(count - 1, 1)
    return mean.float(), var.clamp_min(0).sqrt().float().clamp_min(1e-6), count


def fit_logistic_regression(features, num_classes: int, l2: float, max_iter: int = 200,
                            rows: torch.Tensor | None = None, device: str | torch.device = "cpu",
                            init: LinearProbe | None = None, stats=None,
                            matmul_dtype: torch.dtype = torch.float32) -> LinearProbe:  # fmt: skip
    """Minimise mean cross-entropy + l2/2 * ||W||^2 on standardised features with full-batch L-BFGS
    over the `rows` mask (all rows if None). `init` warm-starts from another fit's weights; `stats`
    (mean, std, rows) from `standardisation`, when already computed for these rows, saves a pass.
    `matmul_dtype=torch.bfloat16` runs the features-by-weights products in bf16 (AMX on recent CPUs,
    tensor cores on GPUs), everything else in fp32."""
    device = torch.device(device)
    mean, std, count = stats or standardisation(features, rows, device)
    if init is not None:
        weight, bias = init.weight.clone(), init.bias.clone()
    else:
        weight, bias = (
            torch.zeros(num_classes, len(mean), device=device),
            torch.zeros(num_classes, device=device),
        )
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=LBFGS_HISTORY,
                                  line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        optimizer.zero_grad()
        total = 0.0
        for x, y in _rows(features, rows, device, matmul_dtype):
            scaled = weight / std
            logits = (x @ scaled.to(matmul_dtype).T).float() + (bias - scaled @ mean)
            loss = F.cross_entropy(logits, y, reduction="sum") / count
            loss.backward()
            total += loss.item()
        penalty = 0.5 * l2 * weight.pow(2).sum()
        penalty.backward()
        return torch.tensor(total + penalty.item())

    optimizer.step(closure)
    return LinearProbe(weight.detach(), bias.detach(), mean, std, l2)


@torch.no_grad()
def topk_correct(probe: LinearProbe, features, k: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Per selected row: is its label among the probe's top k classes."""
    device = probe.weight.device
    hits = [
        (probe.logits(x).topk(min(k, probe.weight.shape[0]), dim=1).indices == y[:, None]).any(1).cpu()
        for x, y in _rows(features, rows, device)
    ]
    return torch.cat(hits)


def accuracy(probe: LinearProbe, features, k: int, rows: torch.Tensor | None = None) -> float:
    return 100 * topk_correct(probe, features, k, rows).float().mean().item()


def holdout_split(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A boolean mask of held-out rows, stratified: each class keeps at least one training example."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    shuffled = labels[order]
    by_class = torch.sort(shuffled, stable=True)
    ranks = torch.empty_like(labels)
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    ranks[order[by_class.indices]] = torch.arange(len(labels)) - starts[by_class.values]
    held = torch.minimum(counts - 1, torch.round(fraction * counts.double()).long())
    return ranks < held[labels]


def select_and_fit(features, num_classes: int, l2_grid: list[float], holdout_fraction: float, seed: int,
                   max_iter: int = 200, device: str | torch.device = "cpu",
                   matmul_dtype: torch.dtype = torch.float32) -> tuple[LinearProbe, dict[float, float]]:  # fmt: skip
    """Pick l2 on a stratified held-out part of the training set, then refit on all of it (a grid of one
    value is fitted on all rows directly)."""
    if len(l2_grid) == 1:
        return fit_logistic_regression(features, num_classes, l2_grid[0], max_iter, None, device,
                                       matmul_dtype=matmul_dtype), {}  # fmt: skip
    holdout = holdout_split(features.labels, holdout_fraction, seed)
    if not holdout.any():
        raise ValueError(f"task.holdout_fraction={holdout_fraction}: no training image held out to choose l2 "
                         "(too few per class); give task.l2_grid one value")  # fmt: skip
    fit, device = ~holdout, torch.device(device)
    stats = standardisation(features, fit, device)
    scores, probes, previous = {}, {}, None
    for l2 in sorted(l2_grid, reverse=True):
        previous = fit_logistic_regression(features, num_classes, l2, max_iter, fit, device, previous, stats,
                                           matmul_dtype)  # fmt: skip
        probes[l2] = previous
        scores[l2] = accuracy(previous, features, k=1, rows=holdout)
    best = max(l2_grid, key=lambda l2: (scores[l2], l2))  # ties: the stronger regulariser
    probe = fit_logistic_regression(features, num_classes, best, max_iter, None, device, probes[best],
                                    matmul_dtype=matmul_dtype)  # fmt: skip
    return probe, scores
