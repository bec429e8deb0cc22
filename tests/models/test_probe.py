import torch

from wsp.models.probe import accuracy, holdout_split, select_and_fit


def blobs(n_per_class=30, classes=4, dim=16, seed=0):
    """Gaussian clusters around fixed centres; `seed` draws a fresh sample of the same clusters."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    noise = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed)) * 2
    return centres[labels] + noise, labels


def test_probe_separates_separable_classes_and_picks_l2_on_holdout():
    x, y = blobs()
    vx, vy = blobs(seed=1)
    probe, scores = select_and_fit(x, y, 4, [1e-3, 1e-1, 10.0], holdout_fraction=0.25, seed=0)
    assert accuracy(probe, vx, vy, k=1) > 90
    assert set(scores) == {1e-3, 1e-1, 10.0} and probe.l2 in scores


def test_probe_is_at_chance_on_random_labels():
    x, _ = blobs()
    y = torch.randint(0, 4, (len(x),), generator=torch.Generator().manual_seed(3))
    vx, _ = blobs(seed=1)
    vy = torch.randint(0, 4, (len(vx),), generator=torch.Generator().manual_seed(4))
    probe, _ = select_and_fit(x, y, 4, [1e-2, 1.0], holdout_fraction=0.25, seed=0)
    assert accuracy(probe, vx, vy, k=1) < 50


def test_holdout_is_stratified_and_disjoint():
    y = torch.tensor([0] * 10 + [1] * 3 + [2])
    fit, hold = holdout_split(y, 0.3, seed=0)
    assert set(fit.tolist()).isdisjoint(hold.tolist()) and len(fit) + len(hold) == len(y)
    assert sorted(y[fit].unique().tolist()) == [0, 1, 2]
    assert (y[hold] == 0).sum() == 3
