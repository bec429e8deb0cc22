import pytest

from wsp.data.imagefolder import ImageFolderDataModule


def test_classes_are_sorted_wnids_and_batches_have_labels(synthetic_dir):
    dm = ImageFolderDataModule(str(synthetic_dir / "target"), batch_size=5, num_workers=0, image_size=32)
    assert dm.class_names == sorted(dm.class_names) and len(dm.class_names) == 6
    assert all(name.startswith("n") and len(name) == 9 for name in dm.class_names)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (5, 3, 32, 32) and labels.max() < 6
    val = dm.dataset("val", augment=False)
    assert len(val) == 6 * 3
    assert [dm.class_names[label] for _, label in val.samples] == [p.split("/")[-2] for p, _ in val.samples]


def test_missing_split_is_a_clear_error(tmp_path):
    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no val/ folder"):
        ImageFolderDataModule(str(tmp_path), batch_size=2, num_workers=0, image_size=32)


def test_val_class_unknown_to_train_is_an_error(tmp_path):
    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    (tmp_path / "val" / "n01443537").mkdir(parents=True)
    with pytest.raises(ValueError, match="missing from train"):
        ImageFolderDataModule(str(tmp_path), batch_size=2, num_workers=0, image_size=32)
