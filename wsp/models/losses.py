"""The paper's loss and its ablation, both computed in fp32 whatever the autocast precision."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("softmax", "sigmoid")


def as_distribution(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices -> one-hot; a soft target (rows summing to 1) passes through."""
    if targets.dtype in (torch.int64, torch.int32):
        return F.one_hot(targets.long(), num_classes).float()
    return targets.float()


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy against a target distribution (an image with k labels gets 1/k on each)."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def sigmoid_binary_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-class binary logistic loss against the k-hot labels (the paper's weaker alternative)."""
    return F.binary_cross_entropy_with_logits(logits.float(), (target > 0).float(), reduction="sum") / len(
        logits
    )


def classification_loss(name: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if name == "softmax":
        return soft_target_cross_entropy(logits, target)
    if name == "sigmoid":
        return sigmoid_binary_cross_entropy(logits, target)
    raise ValueError(f"model.loss={name}: valid are {', '.join(LOSSES)}")


def topk_hits(logits: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """Per sample: 1 if any of the k highest-scoring classes is one of its labels (target > 0)."""
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    return (target.gather(-1, top) > 0).any(dim=-1).float()
