"""Linear evaluation (the paper's feature-transfer protocol): a frozen backbone in eval mode, its pooled
features, and an L2-regularised multinomial logistic regression whose regularisation strength is chosen
on a held-out part of the training set, then refitted on all of it.

Out of core and data-parallel: the fit is full-batch L-BFGS whose objective and gradient are summed over
the features a chunk at a time (a cached shard, on the fitting device), so memory holds one chunk, the
weights and L-BFGS's history, never the whole split. Under DDP each rank sums over its own share of the
shards and the sums are all-reduced, so every rank takes the same L-BFGS path to the same weights.
Features are centred before the products (in TF32 or bf16 an uncentred product loses the small
differences between images to the large common mean) and standardisation is folded into the weights.
The grid is swept from the strongest regulariser down, each fit starting from the previous solution, and
the refit on all rows from the chosen one: the same optimum (the objective is convex), reached in fewer
passes over the data. A fit stops when the largest gradient entry is below `tolerance` (as
scikit-learn's lbfgs), when a step no longer changes the objective, or after `max_iter` iterations; it
reports its end point's objective and gradient (one more pass) and whether it met the tolerance.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

# L-BFGS pairs kept, as scipy's default: 2 x 10 x classes x dims floats (1.5 GB at 9k classes x 2048)
LBFGS_HISTORY = 10


class InMemoryFeatures:
    """Features held in memory (small sets, tests), read in chunks like a cached FeatureSet stage; with
    `part` = (rank, ranks) a rank reads every ranks-th chunk, as it reads its share of the shards."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, chunk_rows: int = 65_536,
                 part: tuple[int, int] = (0, 1)):  # fmt: skip
        self.features, self.labels, self.chunk_rows, self.part = features, labels, chunk_rows, part
        self.dims = features.shape[1]

    def __len__(self) -> int:
        return len(self.labels)

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        rank, ranks = self.part
        for start in range(rank * self.chunk_rows, len(self.features), ranks * self.chunk_rows):
            yield start, self.features[start : start + self.chunk_rows]


class StageFeatures:
    """One stage of a cached FeatureSet (wsp.models.features): this rank's share, streamed shard by
    shard, or held on `device` when the share fits in half its free memory (accelerators only)."""

    def __init__(self, feature_set, stage: str, device: torch.device | None = None):
        self.feature_set, self.stage, self.labels = feature_set, stage, feature_set.labels
        self.part, self.dims = feature_set.part, feature_set.dims[stage]
        self.resident = None
        if device is not None and device.type == "cuda":
            rows = feature_set.share_rows()
            if rows * self.dims * 2 < torch.cuda.mem_get_info(device)[0] / 2:
                self.resident = [(start, x.to(device)) for start, x in feature_set.chunks(stage)]

    def __len__(self) -> int:
        return len(self.labels)

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        return iter(self.resident) if self.resident is not None else self.feature_set.chunks(self.stage)


def _all_sum(features, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks that share `features` (in place); a no-op for one process."""
    if features.part[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def _rows(features, rows: torch.Tensor | None, device: torch.device, marks: torch.Tensor | None = None):
    """(features as stored, labels, `marks` or None) on `device` per chunk of this rank's share,
    restricted to the `rows` mask (all rows if None); `marks` is any per-row tensor to carry along."""
    for start, x in features.chunks():
        y = features.labels[start : start + len(x)]
        m = None if marks is None else marks[start : start + len(x)]
        if rows is not None:
            keep = rows[start : start + len(x)]
            x, y, m = x[keep.to(x.device)], y[keep], None if m is None else m[keep]
        if len(y):
            yield x.to(device, non_blocking=True), y.to(device), None if m is None else m.to(device)


@dataclass
class Fit:
    """How an L-BFGS fit ended: iterations, the final objective, its largest gradient entry, and whether
    that is within the tolerance. Not converged with fewer than `max_iter` iterations: L-BFGS stopped
    because its steps no longer changed the objective (fp32 gradients resolve ~1e-5 here, not less)."""

    iterations: int
    objective: float
    grad_max: float
    converged: bool


@dataclass
class LinearProbe:
    weight: torch.Tensor  # (classes, features), applied to standardised features
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    l2: float
    fit: Fit | None = field(default=None, compare=False)

    def logits(self, features: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        centred = (features.float() - self.mean).to(dtype)
        return (centred @ (self.weight / self.std).to(dtype).T).float() + self.bias


def standardisation(features, rows: torch.Tensor | None, device: torch.device):
    """Mean and std (unbiased) of the selected rows over every rank, from float64 sums. A constant
    feature gets std 1 (its centred value is 0), not a near-zero std that would blow its weight up."""
    count = torch.zeros((), dtype=torch.float64, device=device)
    sums = torch.zeros(2, features.dims, dtype=torch.float64, device=device)
    for x, _, _ in _rows(features, rows, device):
        x = x.double()
        count += len(x)
        sums[0] += x.sum(0)
        sums[1] += x.pow(2).sum(0)
    _all_sum(features, count)
    _all_sum(features, sums)
    n = int(count.item())
    mean = sums[0] / max(n, 1)
    std = ((sums[1] - n * mean.pow(2)) / max(n - 1, 1)).clamp_min(0).sqrt()
    return mean.float(), torch.where(std > 0, std, 1.0).float(), n


def fit_logistic_regression(features, num_classes: int, l2: float, max_iter: int = 200,
                            rows: torch.Tensor | None = None, device: str | torch.device = "cpu",
                            init: LinearProbe | None = None, stats=None,
                            matmul_dtype: torch.dtype = torch.float32, tolerance: float = 1e-4) -> LinearProbe:  # fmt: skip
    """Minimise mean cross-entropy + l2/2 * ||W||^2 on standardised features with full-batch L-BFGS
    over the `rows` mask (all rows if None), summed over every rank holding a share of `features`.
    `init` warm-starts from another fit's weights; `stats` (mean, std, rows) from `standardisation`,
    when already computed for these rows, saves a pass. `matmul_dtype=torch.bfloat16` runs the
    features-by-weights products in bf16 (AMX on recent CPUs, tensor cores on GPUs); on a GPU fp32
    products run in TF32."""
    device = torch.device(device)
    mean, std, count = stats or standardisation(features, rows, device)
    if init is not None:
        weight, bias = init.weight.clone(), init.bias.clone()
    else:
        weight = torch.zeros(num_classes, len(mean), device=device)
        bias = torch.zeros(num_classes, device=device)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=LBFGS_HISTORY,
                                  tolerance_grad=tolerance, line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        weight.grad, bias.grad = torch.zeros_like(weight), torch.zeros_like(bias)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for x, y, _ in _rows(features, rows, device):
            centred = (x.float() - mean).to(matmul_dtype)
            logits = (centred @ (weight / std).to(matmul_dtype).T).float() + bias
            loss = F.cross_entropy(logits, y, reduction="none").double().sum() / count  # summed in fp64
            loss.backward()
            total += loss.detach()
        _all_sum(features, total)
        for p in (weight, bias):
            _all_sum(features, p.grad)
        with torch.no_grad():
            weight.grad += l2 * weight
            # fp64: an fp32 objective cannot resolve the last steps (its rounding stops L-BFGS early)
            objective = total + 0.5 * l2 * weight.double().pow(2).sum()
        return objective

    previous = torch.backends.cuda.matmul.fp32_precision
    if device.type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        optimizer.step(closure)
    finally:
        torch.backends.cuda.matmul.fp32_precision = previous
    state = optimizer.state[weight]
    # one more pass for the end point's objective and gradient (L-BFGS keeps those of the point before)
    objective = closure().item()
    grad_max = max(weight.grad.abs().max().item(), bias.grad.abs().max().item())
    fit = Fit(state["n_iter"], objective, grad_max, converged=grad_max <= tolerance)
    return LinearProbe(weight.detach(), bias.detach(), mean, std, l2, fit)


@torch.no_grad()
def correct(probe: LinearProbe, features, k: int, rows: torch.Tensor | None = None,
            counted_wrong: torch.Tensor | None = None) -> tuple[int, int]:  # fmt: skip
    """(rows whose label is among the probe's top k, rows) over every rank; `counted_wrong` marks rows
    scored as errors whatever the probe says (the paper's lower bound with listed duplicates)."""
    device = probe.weight.device
    tally = torch.zeros(2, dtype=torch.float64, device=device)
    for x, y, wrong in _rows(features, rows, device, counted_wrong):
        hits = (probe.logits(x).topk(min(k, probe.weight.shape[0]), dim=1).indices == y[:, None]).any(1)
        if wrong is not None:
            hits &= ~wrong
        tally[0] += hits.sum()
        tally[1] += len(y)
    _all_sum(features, tally)
    return int(tally[0].item()), int(tally[1].item())


def accuracy(probe: LinearProbe, features, k: int, rows: torch.Tensor | None = None,
             counted_wrong: torch.Tensor | None = None) -> float:  # fmt: skip
    hits, total = correct(probe, features, k, rows, counted_wrong)
    return 100 * hits / max(total, 1)


def holdout_split(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A boolean mask of held-out rows, stratified: each class keeps at least one training example."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    by_class = torch.sort(labels[order], stable=True)
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    held = torch.minimum(counts - 1, torch.round(fraction * counts.double()).long())
    within = torch.arange(len(labels)) - starts[by_class.values]  # rank within its class, in shuffled order
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[order[by_class.indices]] = within < held[by_class.values]
    return mask


def select_and_fit(features, num_classes: int, l2_grid: list[float], holdout_fraction: float, seed: int,
                   max_iter: int = 200, device: str | torch.device = "cpu",
                   matmul_dtype: torch.dtype = torch.float32,
                   tolerance: float = 1e-4) -> tuple[LinearProbe, dict[float, float], dict[float, Fit]]:  # fmt: skip
    """Pick l2 on a stratified held-out part of the training set, then refit on all of it (a grid of one
    value is fitted on all rows directly). Returns the probe, the holdout top-1 per l2, and how each fit
    ended (the sweep's, then the refit's under its l2)."""
    if len(l2_grid) == 1:
        probe = fit_logistic_regression(features, num_classes, l2_grid[0], max_iter, None, device,
                                        matmul_dtype=matmul_dtype, tolerance=tolerance)  # fmt: skip
        return probe, {}, {"refit": probe.fit}
    holdout = holdout_split(features.labels, holdout_fraction, seed)
    if not holdout.any():
        raise ValueError(f"task.holdout_fraction={holdout_fraction}: no training image held out to choose l2 "
                         "(too few per class); give task.l2_grid one value")  # fmt: skip
    fit, device = ~holdout, torch.device(device)
    stats = standardisation(features, fit, device)
    scores, probes, fits, previous = {}, {}, {}, None
    for l2 in sorted(l2_grid, reverse=True):
        previous = fit_logistic_regression(features, num_classes, l2, max_iter, fit, device, previous, stats,
                                           matmul_dtype, tolerance)  # fmt: skip
        probes[l2], fits[l2] = previous, previous.fit
        scores[l2] = accuracy(previous, features, k=1, rows=holdout)
    best = max(l2_grid, key=lambda l2: (scores[l2], l2))  # ties: the stronger regulariser
    probe = fit_logistic_regression(features, num_classes, best, max_iter, None, device, probes[best],
                                    matmul_dtype=matmul_dtype, tolerance=tolerance)  # fmt: skip
    fits["refit"] = probe.fit
    return probe, scores, fits
