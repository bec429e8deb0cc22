import csv
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import put
from wsp.data.transfer import TransferDataModule


def module(root, **kw) -> TransferDataModule:
    return TransferDataModule(
        "imagefolder", str(root), **{"batch_size": 6, "num_workers": 0, "image_size": 32, **kw}
    )


def test_batches_are_uint8_crops_with_labels_and_a_skip_count(synthetic_dir):
    dm = module(synthetic_dir / "target")
    assert dm.class_names == sorted(dm.class_names) and dm.num_classes == 6
    images, labels, skipped, indices = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 32, 32) and skipped == 0
    assert [dm.splits.train[i][1] for i in indices] == labels.tolist()
    standardised, *_ = dm.on_after_batch_transfer((images, labels, skipped), 0)
    assert standardised.dtype == torch.float32 and -3 < standardised.mean() < 3
    val = dm.dataset("val", augment=False)
    assert [dm.class_names[label] for _, label in val.samples] == [p.split("/")[-2] for p, _ in val.samples]


def test_unreadable_images_are_skipped_and_counted_up_to_the_cap(tmp_path, synthetic_dir):
    root = tmp_path / "target"
    shutil.copytree(synthetic_dir / "target", root)
    broken = sorted((root / "val").rglob("*.*"))[:2]
    for path in broken:
        path.write_bytes(b"not an image")
    val_size = len(list((root / "val").rglob("*.*")))
    loader = module(root, max_unreadable=0.5).val_dataloader()
    batches = list(loader)
    assert sum(int(b[2]) for b in batches) == 2 and sum(len(b[0]) for b in batches) == val_size - 2
    with pytest.raises(
        ValueError, match=r"data.root: 1 of \d+ images unreadable, more than data.max_unreadable=0.05"
    ):
        list(module(root, max_unreadable=0.05).val_dataloader())


def image_tree(root: Path, train_per_class: int, val_per_class: int) -> Path:
    """Two classes of tiny JPEGs in train/ and val/."""
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label in ("a", "b"):
            for i in range(count):
                put(root / split / label / f"{label}_{i}.jpg")
    return root


def test_the_unreadable_cap_is_per_pass_with_persistent_workers(tmp_path):
    """One bad file of 20 is within a 5% cap each pass; read four times it would not be, were the count
    not reset each pass (the persistent worker counts into memory it shares with this process)."""
    root = image_tree(tmp_path, train_per_class=10, val_per_class=1)
    (root / "train" / "a" / "a_3.jpg").write_bytes(b"not an image")
    loader = module(root, num_workers=1, max_unreadable=0.05).train_dataloader()
    assert loader.persistent_workers
    for _ in range(4):
        batches = list(loader)
        assert sum(int(b[2]) for b in batches) == 1 and sum(len(b[0]) for b in batches) == 19
        assert loader.dataset.unreadable.value == 1
    (root / "train" / "b" / "b_7.jpg").write_bytes(b"not an image")
    with pytest.raises(
        ValueError, match=r"data.root: 2 of 20 images unreadable, more than data.max_unreadable=0.05"
    ):
        list(loader)


class Preempted(Exception):
    pass


def test_finetune_logs_each_epochs_unreadable_images_and_resumes_mid_epoch_on_the_same_images(
    compose_config, tmp_path, monkeypatch, recwarn
):
    """A bad image in each split, 3 epochs of 2 steps through Lightning (sanity check included): added up
    over the passes, the counts would pass the caps (train 2 of 20, val 1 of 10); the logged sums are per
    pass. The same run stopped 2 steps after its checkpoint at step 3 (mid-epoch), then resumed from it
    (ckpt_path=last), trains the images of the uninterrupted run in its order, step by step."""
    from wsp.models.classifier import Classifier
    from wsp.tasks import run_task

    trained, stop_at = [], []  # (global step, sample indices) of each training step
    train_step = Classifier.training_step

    def recorded(self, batch, batch_idx):
        if self.global_step in stop_at:
            raise Preempted
        trained.append((self.global_step, batch[3].tolist()))
        return train_step(self, batch, batch_idx)

    monkeypatch.setattr(Classifier, "training_step", recorded)
    root = image_tree(tmp_path / "data", train_per_class=10, val_per_class=5)
    (root / "train" / "a" / "a_3.jpg").write_bytes(b"not an image")
    (root / "val" / "b" / "b_1.jpg").write_bytes(b"not an image")
    args = [f"data.root={root}", "task.epochs=3", "data.max_unreadable=0.1", "logger=csv", "data.num_workers=1",
            "data.batch_size=10", "model.image_size=32", "task.checkpoint_every=3"]  # fmt: skip
    assert run_task(compose_config("task=finetune", *args))["steps"] == 6
    with (tmp_path / "csv" / "metrics.csv").open(newline="") as table:
        rows = list(csv.DictReader(table))
    logged = {
        name: [float(row[name]) for row in rows if row[name]]
        for name in ("train/skipped_samples", "val/skipped_samples")
    }
    # one per epoch; val also has the final trainer.validate's pass
    assert logged == {"train/skipped_samples": [1.0] * 3, "val/skipped_samples": [1.0] * 4}
    uninterrupted, trained[:] = trained[:], []
    assert [step for step, _ in uninterrupted] == list(range(6))

    preempted = compose_config("task=finetune", *args)
    preempted.output_dir = str(tmp_path / "preempted")
    stop_at.append(5)
    with pytest.raises(Preempted):
        run_task(preempted)
    assert trained == uninterrupted[:5]  # steps 3 and 4 were after the checkpoint: trained again
    stop_at.clear()
    trained.clear()
    resumed = compose_config("task=finetune", *args, "ckpt_path=last")
    resumed.output_dir = preempted.output_dir
    assert run_task(resumed)["steps"] == 6
    assert trained == uninterrupted[3:]
    assert not [w for w in recwarn if "not resumable" in str(w.message)]  # Lightning sees a resumable loader


def pass_indices(loader, batches: int | None = None) -> list[list[int]]:
    """The sample indices of a loader's next pass, batch by batch (its first `batches` only if given)."""
    taken = []
    for batch in loader:
        taken.append(batch[3].tolist())
        if len(taken) == batches:
            break
    return taken


def test_each_rank_trains_an_equal_disjoint_share_of_a_seeded_order_and_resumes_mid_pass(tmp_path):
    """11 images, 2 ranks, batches of 2: 3 batches a rank, the order padded with one image; each pass a
    new order, a function of the seed and the pass alone. A loader restored from the state after 2
    batches of the second pass gives that pass's last batch, then the third pass; a mid-pass state on
    another layout is refused, one at a pass's end is not."""
    from torch.utils.data import DistributedSampler

    from wsp.config import ConfigError
    from wsp.data.transfer import TrainPasses, collate

    image_tree(tmp_path, train_per_class=6, val_per_class=1)
    (tmp_path / "train" / "b" / "b_5.jpg").unlink()
    dataset = module(tmp_path).dataset("train", augment=False)

    def loader(rank: int = 1, ranks: int = 2, batch_size: int = 2, seed: int = 3) -> TrainPasses:
        return TrainPasses(
            dataset, batch_size=batch_size, seed=seed, rank=rank, ranks=ranks, collate_fn=collate
        )

    ranks = [loader(rank=0), loader(rank=1)]
    assert isinstance(ranks[0].sampler, DistributedSampler)  # so Lightning does not put in its own
    passes = [[pass_indices(rank) for rank in ranks] for _ in range(3)]  # [pass][rank][batch]
    for shares in passes:
        assert [[len(batch) for batch in share] for share in shares] == [[2, 2, 2]] * 2
        order = [i for share in shares for batch in share for i in batch]
        assert sorted(set(order)) == list(range(11)) and len(order) == 12  # one image padded in
    assert passes[0] != passes[1] != passes[2]
    again = loader()
    assert [pass_indices(again) for _ in range(2)] == [passes[0][1], passes[1][1]]
    assert pass_indices(loader(seed=4)) != passes[0][1]

    interrupted = loader()
    pass_indices(interrupted)
    assert pass_indices(interrupted, batches=2) == passes[1][1][:2]
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "batches": 2, "pass_batches": 3, "ranks": 2, "batch_size": 2, "images": 11,
                     "seed": 3}  # fmt: skip
    resumed = loader()
    resumed.load_state_dict(state)
    assert pass_indices(resumed) == passes[1][1][2:] and pass_indices(resumed) == passes[2][1]

    for other in (loader(rank=0, ranks=1), loader(batch_size=4), loader(seed=4)):
        with pytest.raises(
            ConfigError, match="ckpt_path: the checkpoint stopped mid-epoch with another data"
        ):
            other.load_state_dict(state)
    alone = loader(rank=0, ranks=1)
    alone.load_state_dict({**state, "batches": 3})  # the second pass finished: the third begins
    assert pass_indices(alone)[0] == [passes[2][0][0][0], passes[2][1][0][0]]  # the order's first two


def test_a_batch_of_only_unreadable_images_is_empty_counted_and_trained_through(
    compose_config, tmp_path, monkeypatch
):
    """Batches of one image, one unreadable in each split: its batch has no image and counts one skipped.
    Its training step is an optimizer step whose loss is zero and reaches every parameter (under DDP
    each rank runs backward on every step); validation counts the other images only."""
    from wsp.data.transfer import Unreadable, collate
    from wsp.models.classifier import Classifier
    from wsp.tasks import run_task

    images, labels, skipped, indices = collate([Unreadable((3, 8, 8))] * 2)
    assert images.shape == (0, 3, 8, 8) and images.dtype == torch.uint8 and skipped.item() == 2
    assert labels.shape == indices.shape == (0,) and labels.dtype == indices.dtype == torch.int64

    steps = []  # (images, loss, every parameter has a gradient, all of them zero) of each step
    train_step = Classifier.training_step

    def recorded(self, batch, batch_idx):
        loss = train_step(self, batch, batch_idx)
        steps.append([len(batch[0]), None if loss is None else loss.item()])
        return loss

    def before_step(self, optimizer):
        grads = [p.grad for p in self.parameters()]
        steps[-1] += [all(g is not None for g in grads), all(not g.any() for g in grads if g is not None)]

    monkeypatch.setattr(Classifier, "training_step", recorded)
    monkeypatch.setattr(Classifier, "on_before_optimizer_step", before_step)
    root = image_tree(tmp_path / "data", train_per_class=3, val_per_class=2)
    (root / "train" / "a" / "a_1.jpg").write_bytes(b"not an image")
    (root / "val" / "b" / "b_0.jpg").write_bytes(b"not an image")
    cfg = compose_config("task=finetune", f"data.root={root}", "task.epochs=1", "data.max_unreadable=0.3",
                         "logger=csv", "data.num_workers=0", "data.batch_size=1", "model.image_size=64")  # fmt: skip
    metrics = run_task(cfg)
    assert metrics["steps"] == 6 and metrics["finetune/val_images"] == 3
    assert [step for step in steps if step[0] == 0] == [[0, 0.0, True, True]]
    assert [step[2:] for step in steps if step[0] == 1] == [[True, False]] * 5
    with (tmp_path / "csv" / "metrics.csv").open(newline="") as table:
        rows = list(csv.DictReader(table))
    assert [float(row["train/skipped_samples"]) for row in rows if row["train/skipped_samples"]] == [1.0]
    assert [float(row["val/skipped_samples"]) for row in rows if row["val/skipped_samples"]] == [1.0] * 2
    assert [float(row["val/images"]) for row in rows if row["val/images"]] == [3.0] * 2
