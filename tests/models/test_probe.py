import torch

from wsp.data.transforms import normalise
from wsp.models.probe import (
    InMemoryFeatures,
    accuracy,
    fit_logistic_regression,
    holdout_split,
    select_and_fit,
)


def blobs(n_per_class=30, classes=4, dim=16, seed=0):
    """Gaussian clusters around fixed centres; `seed` draws a fresh sample of the same clusters."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    noise = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed)) * 2
    return centres[labels] + noise, labels


def test_probe_separates_separable_classes_and_picks_l2_on_holdout():
    x, y = blobs()
    vx, vy = blobs(seed=1)
    probe, scores = select_and_fit(InMemoryFeatures(x, y, chunk_rows=7), 4, [1e-3, 1e-1, 10.0], 0.25, seed=0)
    assert accuracy(probe, InMemoryFeatures(vx, vy), k=1) > 90
    assert set(scores) == {1e-3, 1e-1, 10.0} and probe.l2 in scores


def test_probe_is_at_chance_on_random_labels():
    x, _ = blobs()
    y = torch.randint(0, 4, (len(x),), generator=torch.Generator().manual_seed(3))
    vx, _ = blobs(seed=1)
    vy = torch.randint(0, 4, (len(vx),), generator=torch.Generator().manual_seed(4))
    probe, _ = select_and_fit(InMemoryFeatures(x, y), 4, [1e-2, 1.0], holdout_fraction=0.25, seed=0)
    assert accuracy(probe, InMemoryFeatures(vx, vy), k=1) < 50


def test_holdout_is_stratified_and_disjoint():
    y = torch.tensor([0] * 10 + [1] * 3 + [2])[torch.randperm(14, generator=torch.Generator().manual_seed(1))]
    hold = holdout_split(y, 0.3, seed=0)
    assert sorted(y[~hold].unique().tolist()) == [0, 1, 2]
    assert [(y[hold] == c).sum().item() for c in range(3)] == [3, 1, 0]
    assert not torch.equal(hold, holdout_split(y, 0.3, seed=1))  # the seed picks which ones


def test_probe_matches_scikit_learn_at_the_same_regularisation():
    """Our objective (mean cross-entropy + l2/2 |W|^2) is sklearn's with C = 1 / (l2 n), summed here over
    chunks of rows as over cached feature shards."""
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
        probe = fit_logistic_regression(InMemoryFeatures(x, y, chunk_rows=700), 10, l2, max_iter=500)
        ours = accuracy(probe, InMemoryFeatures(vx, vy), k=1)
        mean, std = x.mean(0), x.std(0)
        reference = LogisticRegression(C=1 / (l2 * len(x)), max_iter=2000, tol=1e-8)
        reference.fit(((x - mean) / std).numpy(), y.numpy())
        theirs = 100 * (reference.predict(((vx - mean) / std).numpy()) == vy.numpy()).mean()
        assert 30 < ours < 95 and abs(ours - theirs) <= 0.5, (l2, ours, theirs)


def test_features_are_extracted_in_shards_resumed_after_a_kill_and_streamed(tmp_path, synthetic_dir):
    import pytorch_lightning as pl

    from wsp.data.transfer import TransferDataModule
    from wsp.models.backbones import create_backbone
    from wsp.models.features import FeatureSet, extract_features, shard_name

    dm = TransferDataModule(
        "imagefolder", str(synthetic_dir / "target"), batch_size=5, num_workers=0, image_size=32
    )
    backbone = create_backbone("wsp_resnext_tiny")
    stages = ["res2", "res3", "res4", "res5"]
    splits = {"train": dm.dataset("train", augment=False)}

    def extract():
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             use_distributed_sampler=False, enable_progress_bar=False)  # fmt: skip
        return extract_features(trainer, backbone, stages, tmp_path, splits, shard_images=10, batch_size=4,
                                num_workers=0)  # fmt: skip

    assert extract() == 0
    features = FeatureSet(tmp_path, "train")
    assert features.dims == {"res2": 128, "res3": 256, "res4": 512, "res5": 1024}
    assert features.indices.tolist() == list(range(len(dm.splits.train))) and len(features.shards) == 3
    assert [len(x) for _, x in features.chunks("res3")] == [10, 10, 4]  # streamed a shard at a time
    backbone.eval()
    with torch.no_grad():
        direct = backbone(normalise(next(iter(dm.feature_loaders()["train"]))[0]))
    stored = features.load("res5")[:5]
    # stored as fp16, read as fp32
    assert stored.dtype == torch.float32 and torch.allclose(stored, direct, rtol=1e-2, atol=1e-3)

    # a kill mid-extraction: the split's index never written, one shard cut short; the rest is kept
    (tmp_path / "train.json").unlink()
    shard = tmp_path / shard_name("train", 1)
    kept = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("train-*") if p != shard}
    shard.write_bytes(shard.read_bytes()[:-100])
    extract()
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("train-*") if p != shard} == kept
    again = FeatureSet(tmp_path, "train")
    assert torch.equal(again.load("res3"), features.load("res3")) and torch.equal(
        again.labels, features.labels
    )
