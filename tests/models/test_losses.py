import math

import torch
import torch.nn.functional as F

from wsp.models.losses import as_distribution, classification_loss, soft_target_cross_entropy, topk_hits


def test_soft_target_ce_equals_ce_on_one_hot_targets():
    logits = torch.randn(6, 5)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    assert torch.allclose(
        soft_target_cross_entropy(logits, as_distribution(labels, 5)), F.cross_entropy(logits, labels)
    )


def test_k_labels_get_1_over_k_each():
    logits = torch.randn(1, 4)
    target = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    expected = -(F.log_softmax(logits, -1)[0, :2]).mean()
    assert torch.allclose(soft_target_cross_entropy(logits, target), expected)


def test_loss_is_fp32_under_bf16_logits():
    logits = torch.randn(4, 3).bfloat16()
    assert classification_loss("softmax", logits, torch.full((4, 3), 1 / 3)).dtype == torch.float32
    assert classification_loss("sigmoid", logits, torch.full((4, 3), 1 / 3)).dtype == torch.float32


def test_sigmoid_loss_uses_k_hot_targets():
    logits = torch.zeros(2, 3)
    target = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    # every logit 0 -> each of the 3 binary terms costs log 2, summed over classes, averaged over images
    assert torch.allclose(classification_loss("sigmoid", logits, target), torch.tensor(3 * math.log(2)))


def test_topk_hits_count_any_label_of_the_set():
    logits = torch.tensor([[0.1, 0.9, 0.5], [0.9, 0.1, 0.5]])
    target = torch.tensor([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]])
    assert topk_hits(logits, target, 1).tolist() == [0.0, 0.0]
    assert topk_hits(logits, target, 2).tolist() == [1.0, 0.0]
    assert topk_hits(logits, target, 3).tolist() == [1.0, 1.0]
