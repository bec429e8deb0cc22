import shutil

import pytest
import torch

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
