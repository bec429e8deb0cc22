"""Miniature replicas of each official layout (tiny JPEGs, the real list formats) read by wsp's parsers."""

import csv
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import WNIDS, put
from wsp.data import labelled


def flat_val(root: Path, truth: list[str]) -> None:
    for i in range(len(truth)):
        put(root / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    put(root / "train" / WNIDS[0] / "a.JPEG")


def test_imagenet_folders_match_torchvision(imagenet_root):
    import torch
    from torchvision.datasets import ImageNet

    torch.save(
        ({wnid: (wnid,) for wnid in WNIDS}, []), imagenet_root / "meta.bin"
    )  # torchvision's parsed devkit
    splits = labelled.imagenet(imagenet_root)
    assert splits.classes == WNIDS and len(splits.train) == len(splits.val) == 1000
    for split, samples in (("train", splits.train), ("val", splits.val)):
        assert samples == ImageNet(str(imagenet_root), split=split).samples


def test_imagenet_flat_val_with_kaggle_solution(tmp_path):
    truth = [WNIDS[7], WNIDS[3], WNIDS[999]]
    flat_val(tmp_path, truth)
    with (tmp_path / "LOC_val_solution.csv").open("w", newline="") as table:
        writer = csv.writer(table)
        writer.writerow(["ImageId", "PredictionString"])
        for i, wnid in reversed(list(enumerate(truth))):  # any row order
            writer.writerow([f"ILSVRC2012_val_{i + 1:08d}", f"{wnid} 1 2 30 40 {wnid} 5 6 7 8"])
    val = labelled.imagenet(tmp_path).val
    assert [(Path(p).name, label) for p, label in val] == [
        ("ILSVRC2012_val_00000001.JPEG", 7),
        ("ILSVRC2012_val_00000002.JPEG", 3),
        ("ILSVRC2012_val_00000003.JPEG", 999),
    ]
    (tmp_path / "val" / "ILSVRC2012_val_00000002.JPEG").unlink()
    with pytest.raises(ValueError, match="lists 1 images not in"):
        labelled.imagenet(tmp_path)


def test_imagenet_flat_val_with_the_devkits_ground_truth(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    ids = rng.permutation(1000) + 1  # ILSVRC2012_ID of each sorted wnid: the devkit's own order
    fields = [
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    ]
    leaves = [(int(ids[i]), wnid, wnid, "", 0, np.zeros(0), 0, 1300) for i, wnid in enumerate(WNIDS)]
    inner = [(1001, "n00001740", "entity", "", 3, np.array([1, 2, 3]), 18, 0)]  # a non-leaf: not a class
    synsets = np.array(leaves + inner, dtype=[(f, object) for f in fields])
    data = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    truth = [WNIDS[5], WNIDS[0], WNIDS[998], WNIDS[5]]
    id_of = {wnid: int(ids[i]) for i, wnid in enumerate(WNIDS)}
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{id_of[w]}\n" for w in truth))
    flat_val(tmp_path, truth)
    assert [label for _, label in labelled.imagenet(tmp_path).val] == [5, 0, 998, 5]


def test_imagenet_k_holds_out_fifty_per_class_deterministically(tmp_path):
    source = put(tmp_path / "source.jpg")
    tree = tmp_path / "imagenet22k"
    extra = {"n00007846": 60, "n00015388": 55, "n00017222": 52}  # three non-IN-1k classes, by size
    for wnid in WNIDS:
        for i in range(51):
            put(tree / wnid / f"{wnid}_{i}.JPEG", source)
    for wnid, count in extra.items():
        for i in range(count):
            put(tree / wnid / f"{wnid}_{i}.JPEG", source)
    splits = labelled.imagenet_k(tree, 1002)
    assert len(splits.classes) == 1002 and "n00017222" not in splits.classes  # the two most populous extras
    assert len(splits.val) == 50 * 1002 and len(splits.train) == 1000 + 10 + 5
    assert splits.val == labelled.imagenet_k(tree, 1002).val
    index = splits.classes.index("n00007846")
    assert sum(label == index for _, label in splits.train) == 10


def test_cub_splits_labels_and_boxes(tmp_path):
    root = tmp_path / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"{i + 1} {name}\n" for i, name in enumerate(classes)))
    images, labels, split, boxes = [], [], [], []
    for i in range(12):
        name = f"{classes[i % 3]}/{classes[i % 3].split('.')[1]}_{i:04d}_{i}.jpg"
        put(root / "images" / name)
        images.append(f"{i + 1} {name}\n")
        labels.append(f"{i + 1} {i % 3 + 1}\n")
        split.append(f"{i + 1} {int(i < 8)}\n")
        boxes.append(f"{i + 1} 1.0 2.0 {3 + i}.0 4.0\n")
    for name, rows in (("images.txt", images), ("image_class_labels.txt", labels), ("train_test_split.txt", split),
                       ("bounding_boxes.txt", boxes)):  # fmt: skip
        (root / name).write_text("".join(rows))
    assert labelled.cub(root).boxes == {}
    splits = labelled.cub(root, crop_to_box=True)
    assert splits.classes == classes and len(splits.train) == 8 and len(splits.val) == 4
    assert all(Path(path).parent.name == classes[label] for path, label in splits.train + splits.val)
    assert splits.boxes[splits.val[0][0]] == (1.0, 2.0, 11.0, 4.0)
    (root / "train_test_split.txt").write_text("".join(split[:-1]))
    with pytest.raises(ValueError, match="train_test_split.txt does not list the images"):
        labelled.cub(root)


@pytest.mark.parametrize("small", [True, False])
def test_places365_matches_torchvision(tmp_path, small):
    from torchvision.datasets import Places365

    class ReplicaPlaces365(Places365):  # torchvision's parsing; only its md5 check of the real files is off
        def _check_integrity(self, file, md5, download):
            return Path(file).is_file()

    size = "256" if small else "large"
    categories = ["/a/airfield", "/b/bakery/shop", "/c/canyon"]
    (tmp_path / "categories_places365.txt").write_text(
        "".join(f"{c} {i}\n" for i, c in enumerate(categories))
    )
    train_rows, val_rows = [], []
    for i in range(9):
        relative = f"{categories[i % 3]}/{i:08d}.jpg"
        put(tmp_path / f"data_{size}_standard" / relative.lstrip("/"))
        train_rows.append(f"{relative} {i % 3}\n")
    for i in range(4):
        put(tmp_path / f"val_{size}" / f"Places365_val_{i + 1:08d}.jpg")
        val_rows.append(f"Places365_val_{i + 1:08d}.jpg {(i * 2) % 3}\n")
    (tmp_path / "places365_train_standard.txt").write_text("".join(train_rows))
    (tmp_path / "places365_val.txt").write_text("".join(val_rows))
    splits = labelled.places365(tmp_path, small=small)
    assert splits.classes == categories
    assert splits.train == ReplicaPlaces365(str(tmp_path), split="train-standard", small=small).imgs
    assert splits.val == ReplicaPlaces365(str(tmp_path), split="val", small=small).imgs


def test_a_missing_root_or_list_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"data.root={tmp_path}: no {tmp_path / 'classes.txt'}"):
        labelled.cub(tmp_path)
    with pytest.raises(FileNotFoundError, match="data.root=.*: no .*categories_places365.txt"):
        labelled.places365(tmp_path)
    with pytest.raises(FileNotFoundError, match="data.root=.*: no .*/val"):
        labelled.imagenet(tmp_path)
