"""ImageNet-5k/-9k at cluster scale, on miniature ImageNet-22k trees: pinned wnid files, and the image
index listed once and shared through its cache."""

import hashlib
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from tests.conftest import put
from wsp.config import ConfigError
from wsp.data import imagenet22k, labelled
from wsp.utils.images import image_files

SIZES = {"n00007846": 53, "n00015388": 52, "n00017222": 54, "n01440764": 55}  # person, animal, plant, tench
PINNED = ["n00017222", "n01440764", "n00007846"]  # label order: not sorted; n00015388 left out


def tree(tmp_path: Path, sizes: dict[str, int] = SIZES) -> Path:
    source = put(tmp_path / "source.jpg")
    root = tmp_path / "imagenet22k"
    for wnid, count in sizes.items():
        for i in range(count):
            put(root / wnid / f"{wnid}_{i}.JPEG", source)
    (root / "n00007846" / "synset.txt").write_text("not an image")
    (root / "tars").mkdir()  # not a wnid: never a class
    return root


def wnid_file(tmp_path: Path, wnids: list[str], name: str = "wnids.txt") -> Path:
    path = tmp_path / name
    path.write_text("# my ImageNet-5k\n" + "".join(f"{w}\n" for w in wnids))
    return path


def splits(root: Path, wnids: Path, cache: Path, classes=None) -> labelled.Splits:
    return labelled.imagenet_k(root, classes, str(wnids), str(cache))


def test_a_pinned_wnid_file_gives_its_label_order_and_the_fifty_smallest_hashes_as_val(tmp_path):
    root = tree(tmp_path)
    got = splits(root, wnid_file(tmp_path, PINNED), tmp_path / "cache")
    assert got.classes == PINNED
    expected_val, expected_train = [], []
    for label, wnid in enumerate(PINNED):
        images = image_files(root / wnid)
        by_hash = sorted(images, key=lambda p: hashlib.sha1(p.name.encode()).hexdigest())
        expected_val += [(str(p), label) for p in images if p in by_hash[:50]]
        expected_train += [(str(p), label) for p in images if p not in by_hash[:50]]
    assert list(got.val) == expected_val and list(got.train) == expected_train  # class after class, by name
    assert (
        len(got.train) == 4 + 5 + 3
        and got.train[-1] == expected_train[-1]
        and got.train[1:3] == expected_train[1:3]
    )


def test_vocabulary_and_transfer_set_read_the_same_file_through_the_configs(
    tmp_path, compose_config, monkeypatch
):
    from wsp.tasks.common import TRANSFER, make_datamodule
    from wsp.tasks.corpus import corpus_vocabulary

    monkeypatch.setenv("WSP_CACHE", str(tmp_path / "default_cache"))
    root, pinned = tree(tmp_path), wnid_file(tmp_path, PINNED)
    cfg = compose_config(
        "task=probe", "data=imagenet5k", f"data.root={root}", f"data.wnids={pinned}", "data.classes=3",
        f"data.index_cache={tmp_path / 'cache'}", "data.num_workers=0", "data.batch_size=4", "data.image_size=32",
        "corpus=in5k", f"corpus.list_file={pinned}", "corpus.classes=3", "corpus.imagenet22k_root=/nowhere",
    )  # fmt: skip
    datamodule = make_datamodule(cfg, TRANSFER)
    vocabulary = corpus_vocabulary(
        cfg.corpus
    )  # the file alone: the tree is not read (a corpus machine has none)
    assert [label.wnid for label in vocabulary.labels] == datamodule.class_names == PINNED
    images, labels, skipped, indices = next(iter(datamodule.train_dataloader()))
    assert [datamodule.splits.train[i][1] for i in indices] == labels.tolist() and skipped == 0
    with pytest.raises(ConfigError, match=r"lists 3 wnids, but data.classes=5000"):
        make_datamodule(compose_config("task=probe", "data=imagenet5k", f"data.root={root}", f"data.wnids={pinned}"),
                        TRANSFER)  # fmt: skip


def test_a_listed_wnid_without_a_folder_or_with_too_few_images_errors_in_one_line(tmp_path):
    root, cache = tree(tmp_path, {**SIZES, "n00015388": 50}), tmp_path / "cache"
    missing = wnid_file(tmp_path, [*PINNED, "n00019128", "n00021265"], "missing.txt")
    with pytest.raises(FileNotFoundError) as error:
        splits(root, missing, cache)
    assert str(error.value) == (
        f"data.root={root}: no folder {root / 'n00019128'} for a wnid of data.wnids={missing} "
        "(2 listed wnids have none)"
    )
    with pytest.raises(ValueError, match=r"^data.root=.*n00015388 has 50 images; 50 are held out$"):
        splits(root, wnid_file(tmp_path, [*PINNED, "n00015388"], "small.txt"), cache)
    for lines, message in (
        (["n0001722"], r"line 2 \('n0001722'\) is not a wnid"),
        (PINNED + PINNED[:1], "n00017222 is listed twice"),
    ):
        with pytest.raises(ValueError, match=rf"^data.wnids=.*: {message}"):
            splits(root, wnid_file(tmp_path, lines, "bad.txt"), cache)
    with pytest.raises(FileNotFoundError, match=r"^data.wnids=.*nope.txt: no such file$"):
        splits(root, tmp_path / "nope.txt", cache)


def test_the_index_is_listed_once_then_read_and_listed_again_when_the_tree_changes(tmp_path):
    root, pinned, cache = tree(tmp_path), wnid_file(tmp_path, PINNED), tmp_path / "cache"
    first = splits(root, pinned, cache)
    assert len(list(cache.glob("index-*.npz"))) == 1
    for wnid in PINNED:  # images gone: a second call that listed the tree would see none
        for path in image_files(root / wnid)[:2]:
            path.unlink()
    again = splits(root, pinned, cache)
    assert list(again.train) == list(first.train) and list(again.val) == list(first.val)
    (root / "n09999999").mkdir()  # a class folder added: the root's stamp changes, the tree is listed again
    os.utime(root, ns=(time.time_ns(), time.time_ns() + 10**9))  # even on a coarse clock
    relisted = splits(root, pinned, cache)
    assert len(relisted.train) + len(relisted.val) == len(first.train) + len(first.val) - 6
    for path in image_files(root / PINNED[0]):  # 52 -> 0 images
        path.unlink()
    assert len(list(splits(root, pinned, cache).train)) == len(relisted.train)  # still the cached index
    next(cache.glob("index-*.npz")).unlink()  # the documented way to list it again
    with pytest.raises(ValueError, match=r"n00017222 has 0 images"):
        splits(root, pinned, cache)


def _index_when_told(go, root, wnids, cache, out):
    go.wait()
    out.put(len(imagenet22k.load_index(root, wnids, cache).lengths))


def test_a_process_waits_for_the_lock_holder_and_reads_its_index(tmp_path):
    """As DDP ranks and array jobs do: the first takes the lock and lists; the others wait, then read."""
    import fcntl

    root, cache = tree(tmp_path), tmp_path / "cache"
    imagenet22k.load_index(root, PINNED, cache)
    index_file = next(cache.glob("index-*.npz"))
    index_file.unlink()
    context = multiprocessing.get_context("fork")
    go, out = context.Event(), context.Queue()
    child = context.Process(target=_index_when_told, args=(go, root, PINNED, cache, out))
    child.start()  # before the lock is taken: a forked child would share the lock holder's open file
    with open(cache / f".{index_file.stem}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # this test is the process listing the tree
        go.set()
        time.sleep(1.0)
        assert child.is_alive() and out.empty()  # waiting on the lock, not listing
        listed = imagenet22k._list_tree(root, PINNED, imagenet22k._stamp(root))
        imagenet22k._write(listed, index_file)  # what load_index does while it holds the lock
        for path in image_files(root / PINNED[0]):
            path.unlink()  # a child that listed the tree itself would now count 54 fewer images
    assert out.get(timeout=30) == SIZES["n00017222"] + SIZES["n01440764"] + SIZES["n00007846"]
    child.join(5)


def test_image_names_are_the_image_files_of_one_listing(tmp_path):
    for name in ("b.JPEG", "a.jpg", "c.png", "d.WebP", "notes.txt", ".jpg", "e"):
        put(tmp_path / "folder" / name)
    (tmp_path / "folder" / "sub.jpg").mkdir()
    assert [p.name for p in image_files(tmp_path / "folder")] == ["a.jpg", "b.JPEG", "c.png", "d.WebP"]
