import torch

from wsp.data.transforms import normalise
from wsp.models.probe import accuracy, fit_logistic_regression, holdout_split, select_and_fit


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


def test_probe_matches_scikit_learn_at_the_same_regularisation():
    """Our objective (mean cross-entropy + l2/2 |W|^2) is sklearn's with C = 1 / (l2 n)."""
    from sklearn.linear_model import LogisticRegression

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 32, generator=generator) * 0.6

    def overlapping(n, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 10, (n,), generator=g)
        return centres[y] + torch.randn(n, 32, generator=g), y

    x, y = overlapping(3000, 1)
    vx, vy = overlapping(2000, 2)
    for l2 in (1e-3, 1e-1):
        ours = accuracy(fit_logistic_regression(x, y, 10, l2, max_iter=500), vx, vy, k=1)
        mean, std = x.mean(0), x.std(0)
        reference = LogisticRegression(C=1 / (l2 * len(x)), max_iter=2000, tol=1e-8)
        reference.fit(((x - mean) / std).numpy(), y.numpy())
        theirs = 100 * (reference.predict(((vx - mean) / std).numpy()) == vy.numpy()).mean()
        assert 30 < ours < 95 and abs(ours - theirs) <= 0.5, (l2, ours, theirs)


def test_features_are_extracted_once_then_read_from_the_cache(tmp_path, synthetic_dir):
    from wsp.data.transfer import TransferDataModule
    from wsp.models.backbones import create_backbone
    from wsp.models.features import cached_features, extract

    dm = TransferDataModule(
        "imagefolder", str(synthetic_dir / "target"), batch_size=5, num_workers=0, image_size=32
    )
    backbone = create_backbone("wsp_resnext_tiny")
    stages = ["res2", "res3", "res4", "res5"]
    loader = dm.feature_loaders()["train"]
    features, labels, indices = cached_features(
        tmp_path, "train", extract(backbone, loader, stages), shard_size=10
    )
    assert {s: f.shape[1] for s, f in features.items()} == {
        "res2": 128,
        "res3": 256,
        "res4": 512,
        "res5": 1024,
    }
    assert indices.tolist() == list(range(len(dm.splits.train))) and len(list(tmp_path.glob("train-*"))) > 1
    backbone.eval()
    with torch.no_grad():
        direct = backbone(normalise(next(iter(loader))[0]))
    assert torch.allclose(features["res5"][:5], direct, atol=1e-5)  # res5 pooled is the backbone's feature

    def must_not_run():
        raise AssertionError("extracted again")
        yield

    again = cached_features(tmp_path, "train", must_not_run())
    assert torch.equal(again[0]["res3"], features["res3"]) and torch.equal(again[1], labels)
