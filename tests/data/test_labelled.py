"""Miniature replicas of each official layout (tiny JPEGs, the real list formats) read by wsp's parsers."""

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import WNIDS, put
from wsp.data import labelled


def flat_val(images: Path, truth: list[str]) -> None:
    """`images`/val flat, `images`/train with one class: the root, or Kaggle's ILSVRC/Data/CLS-LOC."""
    for i in range(len(truth)):
        put(images / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    put(images / "train" / WNIDS[0] / "a.JPEG")


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


@pytest.mark.parametrize("images", [".", "ILSVRC/Data/CLS-LOC"], ids=["in-root", "kaggle-tree"])
def test_imagenet_flat_val_with_kaggle_solution(tmp_path, images):
    """The solution file lies in the root, beside ILSVRC/ where Kaggle's download has its images."""
    truth = [WNIDS[7], WNIDS[3], WNIDS[999]]
    flat_val(tmp_path / images, truth)
    put(
        tmp_path / images / "test" / "ILSVRC2012_test_00000001.JPEG"
    )  # Kaggle's unlabelled test split: unread
    with (tmp_path / "LOC_val_solution.csv").open("w", newline="") as table:
        writer = csv.writer(table)
        writer.writerow(["ImageId", "PredictionString"])
        for i, wnid in reversed(list(enumerate(truth))):  # any row order
            writer.writerow([f"ILSVRC2012_val_{i + 1:08d}", f"{wnid} 1 2 30 40 {wnid} 5 6 7 8"])
    splits = labelled.imagenet(tmp_path)
    assert splits.val == [
        (str(tmp_path / images / "val" / "ILSVRC2012_val_00000001.JPEG"), 7),
        (str(tmp_path / images / "val" / "ILSVRC2012_val_00000002.JPEG"), 3),
        (str(tmp_path / images / "val" / "ILSVRC2012_val_00000003.JPEG"), 999),
    ]
    assert splits.train == [(str(tmp_path / images / "train" / WNIDS[0] / "a.JPEG"), 0)]
    (tmp_path / images / "val" / "ILSVRC2012_val_00000002.JPEG").unlink()
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


def test_imagenet_k_without_a_wnid_file_chooses_by_count_and_writes_the_choice_to_pin(tmp_path, caplog):
    from wsp.hashtags.vocab import build_vocabulary

    source = put(tmp_path / "source.jpg")
    tree, cache = tmp_path / "imagenet22k", tmp_path / "cache"
    extra = {"n00007846": 60, "n00015388": 55, "n00017222": 52}  # three non-IN-1k classes, by size
    for wnid in WNIDS:
        for i in range(51):
            put(tree / wnid / f"{wnid}_{i}.JPEG", source)
    for wnid, count in extra.items():
        for i in range(count):
            put(tree / wnid / f"{wnid}_{i}.JPEG", source)
    splits = labelled.imagenet_k(tree, 1002, index_cache=str(cache))
    assert len(splits.classes) == 1002 and "n00017222" not in splits.classes  # the two most populous extras
    assert splits.classes == sorted(splits.classes)
    assert len(splits.val) == 50 * 1002 and len(splits.train) == 1000 + 10 + 5
    index = splits.classes.index("n00007846")
    assert sum(label == index for _, label in splits.train) == 10
    (chosen,) = cache.glob("imagenet1002-*.txt")  # the choice, written once and logged, to be pinned
    assert f"pin them with data.wnids={chosen}" in caplog.text
    assert [line for line in chosen.read_text().splitlines() if not line.startswith("#")] == splits.classes
    vocab = build_vocabulary("imagenet_k", imagenet22k_root=str(tree), classes=1002, index_cache=str(cache))
    assert [label.wnid for label in vocab.labels] == splits.classes  # the hashtag labels are the classes
    assert list(cache.glob("imagenet1002-*.txt")) == [chosen]  # chosen alike, into the same file
    for path in (tree / "n00007846").iterdir():
        path.unlink()  # pinned, the choice reads the index cached for it: nothing is listed again
    pinned = labelled.imagenet_k(tree, 1002, str(chosen), str(cache))
    assert pinned.classes == splits.classes and list(pinned.val) == list(splits.val)
    assert list(pinned.train) == list(splits.train)


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


CATEGORIES = ["/a/airfield", "/b/bakery/shop", "/c/canyon"]


def places365_replica(root: Path, train_dir: str, val_dir: str, per_class: int = 3) -> None:
    """The three list files and `per_class` train images of each category; val has four images."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "categories_places365.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(CATEGORIES)))
    train_rows, val_rows = [], []
    for i in range(per_class * len(CATEGORIES)):
        relative = f"{CATEGORIES[i % 3]}/{i:08d}.jpg"
        put(root / train_dir / relative.lstrip("/"))
        train_rows.append(f"{relative} {i % 3}\n")
    for i in range(4):
        put(root / val_dir / f"Places365_val_{i + 1:08d}.jpg")
        val_rows.append(f"Places365_val_{i + 1:08d}.jpg {(i * 2) % 3}\n")
    (root / "places365_train_standard.txt").write_text("".join(train_rows))
    (root / "places365_val.txt").write_text("".join(val_rows))


@pytest.mark.parametrize("small", [True, False], ids=["small", "large"])
@pytest.mark.parametrize("official", [True, False], ids=["official-tars", "torchvision-names"])
def test_places365_matches_torchvision(tmp_path, small, official):
    """The official tars unpack train images to data_256/ (data_large/), which torchvision renames to
    data_256_standard/ (data_large_standard/); both read as torchvision reads its own."""
    from torchvision.datasets import Places365

    class ReplicaPlaces365(Places365):  # torchvision's parsing; only its md5 check of the real files is off
        def _check_integrity(self, file, md5, download):
            return Path(file).is_file()

    size = "256" if small else "large"
    train_dir = f"data_{size}" if official else f"data_{size}_standard"
    places365_replica(tmp_path, train_dir, f"val_{size}")
    splits = labelled.places365(tmp_path, small=small)
    assert splits.classes == CATEGORIES
    torchvision_train = ReplicaPlaces365(str(tmp_path), split="train-standard", small=small).imgs
    renamed = str(tmp_path / f"data_{size}_standard"), str(tmp_path / train_dir)
    assert splits.train == [(path.replace(*renamed, 1), label) for path, label in torchvision_train]
    assert all(Path(path).is_file() for path, _ in splits.train)
    assert splits.val == ReplicaPlaces365(str(tmp_path), split="val", small=small).imgs


def test_probe_on_places365_as_the_official_tars_unpack(compose_config, tmp_path):
    from wsp.tasks import run_task

    root = tmp_path / "places365"
    places365_replica(root, "data_256", "val_256", per_class=4)
    cfg = compose_config("task=probe", "data=places365", f"data.root={root}", "task.l2_grid=[1.0]",
                         "logger=csv", "data.num_workers=0", "data.batch_size=8", "model.image_size=32")  # fmt: skip
    metrics = run_task(cfg)
    assert (
        metrics["probe/train_images"] == 12
        and metrics["probe/val_images"] == 4
        and 0 <= metrics["probe/top1"] <= 100
    )


def test_a_missing_root_or_list_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"data.root={tmp_path}: no {tmp_path / 'classes.txt'}"):
        labelled.cub(tmp_path)
    with pytest.raises(FileNotFoundError, match="data.root=.*: no .*categories_places365.txt"):
        labelled.places365(tmp_path)
    tried = f"{tmp_path}/, {tmp_path}/ILSVRC/Data/CLS-LOC/"
    (tmp_path / "train").mkdir()  # half a layout is no layout
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"data.root={tmp_path}: no train/ and val/ folders; tried {tried}")
    ):
        labelled.imagenet(tmp_path)


@pytest.mark.parametrize("small", [True, False], ids=["small", "large"])
def test_a_missing_places365_train_folder_names_every_folder_tried(tmp_path, small):
    size, other = ("256", "large") if small else ("large", "256")
    places365_replica(tmp_path, f"data_{other}", f"val_{size}")  # the other variant's train images only
    tried = f"{tmp_path}/data_{size}_standard/, {tmp_path}/data_{size}/"
    message = f"data.root={tmp_path}: no train images folder; tried {tried}"
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(message)}$"):
        labelled.places365(tmp_path, small=small)
