"""The paper's transfer datasets, read from their official on-disk layouts into (path, label) lists.

- ImageNet-1k (ILSVRC2012): `train/<wnid>/*` and `val/`, in the root or, as Kaggle's download has them,
  in `ILSVRC/Data/CLS-LOC/`; `val/` as wnid folders, or flat with Kaggle's `LOC_val_solution.csv` (in
  the root), or flat with the devkit's ground truth (`ILSVRC2012_devkit_t12/data/`
  `ILSVRC2012_validation_ground_truth.txt` + `meta.mat`, matched to the sorted file names as
  torchvision does). Labels are timm's sorted-wnid order.
- ImageNet-5k / -9k: an ImageNet-22k (fall 2011) tree `<root>/<wnid>/*`; the classes of a wnid file, in
  its order, or the IN-1k classes plus the most populous others; per class, the 50 images with the
  smallest name hashes are the val split (wsp.data.imagenet22k: the tree is listed once and cached).
- CUB-200-2011: `images.txt`, `image_class_labels.txt`, `train_test_split.txt`, `classes.txt`,
  `images/`, and `bounding_boxes.txt` for the optional crop to the bird (`crop_to_box`).
- Places365-Standard: `categories_places365.txt`, `places365_train_standard.txt`, `places365_val.txt`,
  train images in `data_256/` (the official tar's name) or `data_256_standard/` (torchvision's) and
  val images in `val_256/` (small), or `data_large/` or `data_large_standard/` and `val_large/`.

A missing root or file, or a list that does not match the folder, raises one line naming it (every
folder tried, where a layout has several names for one).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wsp.data import imagenet22k
from wsp.utils.images import image_files

Samples = list[tuple[str, int]]


@dataclass
class Splits:
    classes: list[str]  # label i's name
    train: Sequence[tuple[str, int]]  # a list, or (ImageNet-5k/-9k) arrays read as one
    val: Sequence[tuple[str, int]]
    boxes: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)  # path -> x, y, w, h


def _need(root: Path, path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"data.root={root}: no {path}")
    return path


def _first_folder(root: Path, what: str, candidates: list[Path], holding: tuple[str, ...] = ()) -> Path:
    """The first candidate folder that holds every subfolder in `holding`: one dataset, as each source
    unpacks it, under different names."""
    for folder in candidates:
        if folder.is_dir() and all((folder / name).is_dir() for name in holding):
            return folder
    raise FileNotFoundError(f"data.root={root}: no {what}; tried {', '.join(f'{c}/' for c in candidates)}")


def _lines(root: Path, path: Path) -> list[list[str]]:
    return [line.split() for line in _need(root, path).read_text().splitlines() if line.strip()]


def _class_folders(root: Path, split_dir: Path, index: dict[str, int]) -> Samples:
    samples = []
    for folder in sorted(p for p in _need(root, split_dir).iterdir() if p.is_dir()):
        if folder.name not in index:
            raise ValueError(f"data.root={root}: {folder} is not a class of this dataset")
        samples += [(str(path), index[folder.name]) for path in image_files(folder)]
    return samples


def _check_listed(root: Path, listed: list[Path], folder: Path, list_file: Path) -> None:
    """A list and its image folder must agree both ways."""
    on_disk = {p.name for p in image_files(folder)}
    if missing := [p for p in listed if p.name not in on_disk]:
        raise ValueError(
            f"data.root={root}: {list_file} lists {len(missing)} images not in {folder}, e.g. {missing[0].name}"
        )
    if extra := sorted(on_disk - {p.name for p in listed}):
        raise ValueError(
            f"data.root={root}: {folder} has {len(extra)} images not in {list_file}, e.g. {extra[0]}"
        )


def imagenet(root: str | Path) -> Splits:
    from wsp.hashtags.wordnet import imagenet1k_wnids

    root = Path(root)
    wnids = imagenet1k_wnids()
    index = {wnid: i for i, wnid in enumerate(wnids)}
    kaggle = root / "ILSVRC" / "Data" / "CLS-LOC"
    images = _first_folder(root, "train/ and val/ folders", [root, kaggle], holding=("train", "val"))
    val_dir = images / "val"
    if any(p.is_dir() for p in val_dir.iterdir()):
        val = _class_folders(root, val_dir, index)
    elif (solution := root / "LOC_val_solution.csv").is_file():
        with solution.open(newline="") as table:
            rows = [
                (val_dir / f"{row['ImageId']}.JPEG", row["PredictionString"].split()[0])
                for row in csv.DictReader(table)
            ]
        _check_listed(root, [path for path, _ in rows], val_dir, solution)
        val = sorted((str(path), index[wnid]) for path, wnid in rows)
    else:
        val = _devkit_val(root, val_dir, index)
    return Splits(wnids, _class_folders(root, images / "train", index), val)


def _devkit_val(root: Path, val_dir: Path, index: dict[str, int]) -> Samples:
    import scipy.io

    data = root / "ILSVRC2012_devkit_t12" / "data"
    truth = _need(root, data / "ILSVRC2012_validation_ground_truth.txt")
    synsets = scipy.io.loadmat(_need(root, data / "meta.mat"), squeeze_me=True)["synsets"]
    id_to_wnid = {int(s[0]): str(s[1]) for s in synsets if int(s[4]) == 0}  # leaves: the 1,000 classes
    ids = [int(line[0]) for line in _lines(root, truth)]
    images = image_files(val_dir)
    if len(images) != len(ids):
        raise ValueError(
            f"data.root={root}: {truth} has {len(ids)} labels for {len(images)} images in {val_dir}"
        )
    return [(str(path), index[id_to_wnid[i]]) for path, i in zip(images, ids, strict=True)]


def imagenet_k(root: str | Path, classes: int | None = None, wnids: str | None = None,
               index_cache: str | None = None) -> Splits:  # fmt: skip
    """ImageNet-5k/-9k: the classes of the wnid file `wnids` in its order, or (none given) `classes`
    chosen by image count and written to a wnid file to pin; the tree listed once into `index_cache`
    (wsp.data.imagenet22k)."""
    root = _need(Path(root), Path(root))
    names, index = imagenet22k.class_list(root, classes, wnids, index_cache, imagenet22k.DATA)
    for wnid in names:
        if (count := index.count(wnid)) <= imagenet22k.VAL_PER_CLASS:
            raise ValueError(
                f"data.root={root}: {root / wnid} has {count} images; {imagenet22k.VAL_PER_CLASS} are held out"
            )
    train, val = imagenet22k.samples(root, index, names)
    return Splits(names, train, val)


def cub(root: str | Path, crop_to_box: bool = False) -> Splits:
    root = Path(root)
    names = [name for _, name in sorted((int(i), name) for i, name in _lines(root, root / "classes.txt"))]
    paths = {i: root / "images" / path for i, path in _lines(root, root / "images.txt")}
    labels = {i: int(label) - 1 for i, label in _lines(root, root / "image_class_labels.txt")}
    is_train = {i: flag == "1" for i, flag in _lines(root, root / "train_test_split.txt")}
    for list_file, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
        if set(table) != set(paths):
            raise ValueError(f"data.root={root}: {root / list_file} does not list the images of images.txt")
    for path in paths.values():
        _need(root, path)
    splits: dict[bool, Samples] = {True: [], False: []}
    for i, path in paths.items():
        splits[is_train[i]].append((str(path), labels[i]))
    boxes = (
        {str(paths[i]): tuple(map(float, box)) for i, *box in _lines(root, root / "bounding_boxes.txt")}
        if crop_to_box
        else {}
    )
    return Splits(names, splits[True], splits[False], boxes)


def places365(root: str | Path, small: bool = True) -> Splits:
    root = Path(root)
    classes = [
        name
        for name, _ in sorted(_lines(root, root / "categories_places365.txt"), key=lambda row: int(row[1]))
    ]
    size = "256" if small else "large"

    def listed(list_file: str, images_dir: Path) -> Samples:
        return [
            (str(images_dir / path.lstrip("/")), int(label)) for path, label in _lines(root, root / list_file)
        ]

    train_dir = _first_folder(
        root, "train images folder", [root / f"data_{size}_standard", root / f"data_{size}"]
    )
    train = listed("places365_train_standard.txt", train_dir)
    val = listed("places365_val.txt", root / f"val_{size}")
    for path, _ in train[:1] + val:  # every val image; the train list is checked as it is read
        _need(root, Path(path))
    return Splits(classes, train, val)


def image_folder(root: str | Path, train_split: str = "train", val_split: str = "val") -> Splits:
    """Any `<root>/<split>/<class>/*` tree; classes are the train split's sorted folder names."""
    root = Path(root)
    classes = sorted(p.name for p in _need(root, root / train_split).iterdir() if p.is_dir())
    index = {name: i for i, name in enumerate(classes)}
    return Splits(
        classes,
        _class_folders(root, root / train_split, index),
        _class_folders(root, root / val_split, index),
    )
