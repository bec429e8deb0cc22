"""Linear evaluation (the paper's feature-transfer protocol): a frozen backbone in eval mode, its pooled
features, and an L2-regularised multinomial logistic regression whose regularisation strength is chosen
on a held-out part of the training set, then refitted on all of it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wsp.models.losses import topk_hits


@dataclass
class LinearProbe:
    weight: torch.Tensor  # (classes, features), applied to standardised features
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    l2: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return ((features - self.mean) / self.std) @ self.weight.T + self.bias


def fit_logistic_regression(
    features, labels, num_classes: int, l2: float, max_iter: int = 200
) -> LinearProbe:
    """Minimise mean cross-entropy + l2/2 * ||W||^2 on standardised features with full-batch L-BFGS."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(weight.detach(), bias.detach(), mean, std, l2)


def accuracy(probe: LinearProbe, features, labels, k: int) -> float:
    target = F.one_hot(labels, probe.weight.shape[0]).float()
    return 100 * topk_hits(probe.logits(features), target, k).mean().item()


def holdout_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (fit, holdout), stratified: each class keeps at least one training example."""
    generator = torch.Generator().manual_seed(seed)
    fit, holdout = [], []
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_hold = min(len(members) - 1, round(fraction * len(members)))
        holdout.append(members[:n_hold])
        fit.append(members[n_hold:])
    return torch.cat(fit), torch.cat(holdout)


def select_and_fit(features, labels, num_classes: int, l2_grid: list[float], holdout_fraction: float,
                   seed: int, max_iter: int = 200) -> tuple[LinearProbe, dict[float, float]]:  # fmt: skip
    """Pick l2 on a stratified held-out part of the training set, then refit on all of it."""
    fit, holdout = holdout_split(labels, holdout_fraction, seed)
    scores = {}
    for l2 in l2_grid:
        probe = fit_logistic_regression(features[fit], labels[fit], num_classes, l2, max_iter)
        scores[l2] = accuracy(probe, features[holdout], labels[holdout], k=1)
    best = max(l2_grid, key=lambda l2: (scores[l2], l2))  # ties: the stronger regulariser
    return fit_logistic_regression(features, labels, num_classes, best, max_iter), scores
