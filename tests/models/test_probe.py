from datetime import timedelta
from pathlib import Path

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
    probe, scores, _ = select_and_fit(
        InMemoryFeatures(x, y, chunk_rows=7), 4, [1e-3, 1e-1, 10.0], 0.25, seed=0
    )
    assert accuracy(probe, InMemoryFeatures(vx, vy), k=1) > 90
    assert set(scores) == {1e-3, 1e-1, 10.0} and probe.l2 in scores


def test_probe_is_at_chance_on_random_labels():
    x, _ = blobs()
    y = torch.randint(0, 4, (len(x),), generator=torch.Generator().manual_seed(3))
    vx, _ = blobs(seed=1)
    vy = torch.randint(0, 4, (len(vx),), generator=torch.Generator().manual_seed(4))
    probe, _, _ = select_and_fit(InMemoryFeatures(x, y), 4, [1e-2, 1.0], holdout_fraction=0.25, seed=0)
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

    from wsp.data.transfer import TransferDataModule, collate
    from wsp.models.backbones import create_backbone
    from wsp.models.features import FeatureExtractor, FeatureSet, extract_features, shard_name

    dm = TransferDataModule(
        "imagefolder", str(synthetic_dir / "target"), batch_size=5, num_workers=0, image_size=32
    )
    backbone = create_backbone("wsp_resnext_tiny")
    stages = ["res2", "res3", "res4", "res5"]
    splits = {"train": dm.dataset("train", augment=False)}

    def extract():
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             use_distributed_sampler=False, enable_progress_bar=False)  # fmt: skip
        extractor = FeatureExtractor(backbone, stages, tmp_path, splits, {}, shard_images=10, batch_size=4,
                                     num_workers=0, collate=collate)  # fmt: skip
        return extract_features(trainer, extractor, max_unreadable=0.0), extractor.written

    folder, written = extract()
    assert written == [shard_name("train", j) for j in range(3)]
    features = FeatureSet(folder, "train")
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
    (folder / "train.json").unlink()
    shard = folder / shard_name("train", 1)
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("train-*") if p != shard}
    shard.write_bytes(shard.read_bytes()[:-100])
    assert extract() == (folder, [shard.name])
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("train-*") if p != shard} == kept
    again = FeatureSet(folder, "train")
    assert torch.equal(again.load("res3"), features.load("res3")) and torch.equal(
        again.labels, features.labels
    )


TIGHT = 1e-7  # to the optimum within fp32 round-off: the sum order of the chunks differs between layouts


def _fit_share(rank: int, ranks: int, address: str, x, y, results):
    import torch.distributed as dist

    torch.set_num_threads(1)  # the same reduction order as the single-process fit below
    # a rank that falls out of step fails within a minute instead of hanging in a collective
    dist.init_process_group(
        "gloo", init_method=address, rank=rank, world_size=ranks, timeout=timedelta(seconds=60)
    )
    try:
        probe, scores, fits = select_and_fit(InMemoryFeatures(x, y, chunk_rows=50, part=(rank, ranks)), 4,
                                             [1e-2, 1.0], 0.25, seed=0, max_iter=1000, tolerance=TIGHT)  # fmt: skip
        vx, vy = blobs(seed=1)
        top1 = accuracy(probe, InMemoryFeatures(vx, vy, chunk_rows=50, part=(rank, ranks)), k=1)
        results[rank] = (probe.weight, probe.bias, probe.l2, top1, fits["refit"].iterations)
    finally:
        dist.destroy_process_group()


def test_a_data_parallel_fit_equals_the_single_process_fit(tmp_path):
    """Three ranks over 4 chunks of 50 rows (rank 0 holds two), each summing its own, objective and
    gradient all-reduced: the same l2, the same top-1, and the same weights as one process within what
    fp32 gradients resolve (the chunks' sums are rounded in another order)."""
    import torch.multiprocessing as mp

    x, y = blobs(n_per_class=50)
    torch.set_num_threads(1)
    probe, _, fits = select_and_fit(InMemoryFeatures(x, y, chunk_rows=50), 4, [1e-2, 1.0], 0.25, seed=0,
                                    max_iter=1000, tolerance=TIGHT)  # fmt: skip
    vx, vy = blobs(seed=1)
    top1 = accuracy(probe, InMemoryFeatures(vx, vy), k=1)
    results = mp.Manager().dict()
    mp.spawn(_fit_share, args=(3, f"file://{tmp_path / 'rendezvous'}", x, y, results), nprocs=3)
    for rank in range(3):
        weight, bias, l2, rank_top1, iterations = results[rank]
        assert (l2, rank_top1) == (probe.l2, top1)
        assert (
            abs(iterations - fits["refit"].iterations) <= 2
        )  # the sums' rounding differs, so may the last steps
        torch.testing.assert_close(weight, probe.weight, rtol=1e-4, atol=2e-5)
        torch.testing.assert_close(bias, probe.bias, rtol=1e-4, atol=2e-5)


def test_a_fit_stops_on_its_tolerance_and_says_whether_it_converged():
    x, y = blobs()
    loose = fit_logistic_regression(InMemoryFeatures(x, y), 4, 1e-2, max_iter=500, tolerance=1e-3)
    tight = fit_logistic_regression(InMemoryFeatures(x, y), 4, 1e-2, max_iter=500, tolerance=1e-5)
    cut = fit_logistic_regression(InMemoryFeatures(x, y), 4, 1e-2, max_iter=3, tolerance=1e-5)
    assert loose.fit.converged and loose.fit.grad_max <= 1e-3 and loose.fit.iterations < tight.fit.iterations
    assert tight.fit.converged and tight.fit.grad_max <= 1e-5 and tight.fit.objective <= loose.fit.objective
    assert not cut.fit.converged and cut.fit.iterations <= 3 and cut.fit.grad_max > 1e-5


def test_centred_products_keep_bf16_accurate_and_a_constant_feature_gets_no_weight():
    """Features with a large common mean (mean/std 20, like rectified pooled features): bf16 products of
    uncentred features would lose the differences; centred, the bf16 fit predicts as the fp32 one. A
    constant feature is standardised with std 1, so its centred value is 0 and its weight stays 0."""
    x, y = blobs(n_per_class=100, dim=8)
    x = torch.cat([x + 20 * x.std(), torch.full((len(x), 1), 7.0)], 1)
    vx, vy = blobs(n_per_class=100, dim=8, seed=1)
    vx = torch.cat([vx + 20 * x[:, :8].std(), torch.full((len(vx), 1), 7.0)], 1)
    fp32 = fit_logistic_regression(InMemoryFeatures(x, y), 4, 1e-2, max_iter=300)
    bf16 = fit_logistic_regression(InMemoryFeatures(x, y), 4, 1e-2, max_iter=300, matmul_dtype=torch.bfloat16)
    assert fp32.std[-1] == 1 and fp32.weight[:, -1].abs().max() == 0
    agree = (fp32.logits(vx).argmax(1) == bf16.logits(vx, torch.bfloat16).argmax(1)).float().mean()
    assert (
        agree >= 0.99
        and abs(accuracy(fp32, InMemoryFeatures(vx, vy), 1) - accuracy(bf16, InMemoryFeatures(vx, vy), 1))
        <= 1
    )


def _extractor(root, cache, max_unreadable=1.0, shard_images=10, batch_size=4):
    from wsp.data.transfer import TransferDataModule, collate
    from wsp.models.backbones import create_backbone
    from wsp.models.features import FeatureExtractor

    dm = TransferDataModule("imagefolder", str(root), batch_size=batch_size, num_workers=0, image_size=32,
                            max_unreadable=max_unreadable)  # fmt: skip
    torch.manual_seed(0)
    splits = {"train": dm.dataset("train", augment=False)}
    return FeatureExtractor(create_backbone("wsp_resnext_tiny"), ["res5"], cache, splits, {}, shard_images,
                            batch_size, 0, collate)  # fmt: skip


def _predictor():
    import pytorch_lightning as pl

    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      use_distributed_sampler=False, enable_progress_bar=False)  # fmt: skip


def test_the_unreadable_cap_holds_over_the_whole_split_and_a_refused_split_is_not_cached(
    tmp_path, synthetic_dir
):
    """Three unreadable images of 24, two in one shard. The cap is checked over the split once every
    shard is written (under DDP no rank sees the whole split; here the dataset's own per-pass cap is
    left loose, as one rank's would be): 10% refuses the split, deletes the shards with gaps and writes
    no index; 20% closes it, recording which images were skipped."""
    import shutil

    from wsp.models.features import FeatureSet, extract_features

    root = tmp_path / "target"
    shutil.copytree(synthetic_dir / "target", root)
    images = sorted((root / "train").rglob("*.*"))
    for i in (1, 3, 15):
        images[i].write_bytes(b"not an image")
    extractor = _extractor(root, tmp_path / "cache")
    try:
        extract_features(_predictor(), extractor, max_unreadable=0.1)
        raise AssertionError("a split with 3 of 24 images unreadable passed a 10% cap")
    except ValueError as err:
        assert "3 of 24 train images unreadable, more than data.max_unreadable=0.1" in str(err)
    assert not (extractor.folder / "train.json").exists()
    assert sorted(p.name for p in extractor.folder.glob("train-*")) == ["train-00002.safetensors"]  # no gaps

    extractor = _extractor(root, tmp_path / "cache")
    folder = extract_features(_predictor(), extractor, max_unreadable=0.2)
    assert extractor.written == [
        "train-00000.safetensors",
        "train-00001.safetensors",
    ]  # the gapped ones again
    features = FeatureSet(folder, "train")
    assert features.unreadable == 3 and len(features) == 21
    assert sorted(set(range(24)) - set(features.indices.tolist())) == [
        i
        for i, (path, _) in enumerate(extractor_samples(root))
        if Path(path) in {images[j] for j in (1, 3, 15)}
    ]


def extractor_samples(root):
    from wsp.data import labelled

    return labelled.image_folder(root).train


def _extract_job(root, cache, start, written):
    torch.set_num_threads(1)
    from wsp.models.features import extract_features

    extractor = _extractor(root, cache, shard_images=2, batch_size=1)
    start.wait()  # both jobs extract at once
    extract_features(_predictor(), extractor, max_unreadable=0.0)
    written.extend(extractor.written)


def test_two_jobs_extracting_into_one_cache_share_the_shards_without_doing_one_twice(tmp_path, synthetic_dir):
    import multiprocessing

    from wsp.models.features import FeatureSet

    context = multiprocessing.get_context("spawn")
    start, manager = context.Barrier(2), context.Manager()
    written = [manager.list(), manager.list()]
    jobs = [
        context.Process(target=_extract_job, args=(synthetic_dir / "target", tmp_path, start, w))
        for w in written
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=300)
        assert job.exitcode == 0
    first, second = list(written[0]), list(written[1])
    assert first and second, (first, second)  # both took part
    assert not set(first) & set(second) and len(first) + len(second) == 12  # every shard once
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert FeatureSet(folder, "train").indices.tolist() == list(range(24))
