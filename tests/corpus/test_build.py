import csv
import hashlib
import json
from pathlib import Path

import pytest
import webdataset as wds

from wsp.corpus.build import BuildOptions, build, expand_inputs, hashtags_of
from wsp.corpus.posts import Columns, read_posts
from wsp.hashtags.vocab import build_vocabulary


def read_shards(directory: Path, prefix: str = "train") -> list[dict]:
    urls = [str(p) for p in sorted(directory.glob(f"{prefix}-*.tar"))]
    return list(wds.WebDataset(urls, shardshuffle=False).decode())


def test_shards_round_trip_labels_images_and_metadata(corpus_dir, synthetic_dir):
    vocab = json.loads((corpus_dir / "vocab.json").read_text())
    sizes = json.loads((corpus_dir / "sizes.json").read_text())
    samples = read_shards(corpus_dir) + read_shards(corpus_dir, "val")
    assert len(samples) == sum(sizes.values())
    posts = {
        p.key: p
        for path in sorted((synthetic_dir / "posts").glob("*.jsonl"))
        for p in read_posts(path, Columns())
    }
    names = [label["name"] for label in vocab["labels"]]
    for sample in samples[:50]:
        meta = sample["json"]
        post = posts[meta["source"]]
        assert sample["jpg"] is not None
        assert meta["labels"] == sorted(set(meta["labels"])) and meta["labels"]
        assert meta["label_names"] == [names[i] for i in meta["labels"]]
        assert meta["hashtags"] == hashtags_of(post, 64)


def test_image_bytes_pass_through_unchanged(corpus_dir, synthetic_dir):
    urls = [str(p) for p in sorted(corpus_dir.glob("train-*.tar"))]
    for sample in list(wds.WebDataset(urls, shardshuffle=False))[:20]:  # raw, undecoded
        source = json.loads(sample["json"])["source"]
        assert sample["jpg"] == (synthetic_dir / "posts" / "images" / f"{source}.jpg").read_bytes()


def test_stats_and_vocab_are_consistent(corpus_dir):
    stats = json.loads((corpus_dir / "stats.json").read_text())
    vocab = json.loads((corpus_dir / "vocab.json").read_text())
    assert stats["posts_read"] == sum(stats["written"].values()) + sum(stats["dropped"].values())
    assert stats["labels"]["kept"] == len(vocab["labels"]) == 6
    assert sum(label["train_frequency"] for label in vocab["labels"]) == pytest.approx(
        stats["written"]["train"]
    )


def write_posts(tmp_path: Path, image: bytes) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    (images / "good.jpg").write_bytes(image)
    (images / "bad.jpg").write_bytes(b"not a jpeg at all")
    (images / "truncated.jpg").write_bytes(image[:40])
    rows = [
        {"key": "good", "image": "images/good.jpg", "caption": "#brownbear 🐻 #love"},
        {"key": "also_good", "image": "images/good.jpg", "hashtags": ["Ursus_arctos", "goldfish"]},
        {"key": "missing", "image": "images/nowhere.jpg", "caption": "#brownbear"},
        {"key": "corrupt", "image": "images/bad.jpg", "caption": "#goldfish"},
        {"key": "truncated", "image": "images/truncated.jpg", "caption": "#goldfish"},
        {"key": "offvocab", "image": "images/good.jpg", "caption": "#love #😀 \x00\x01"},
        {"key": "noimage", "caption": "#goldfish"},
        {"key": "notext", "image": "images/good.jpg"},
        {"key": "huge", "image": "images/good.jpg", "caption": "x" * 50_000 + " #goldfish"},
    ]
    table = tmp_path / "posts.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows) + "\n{this is not json\n[1, 2]\n")
    return table


def test_bad_inputs_are_counted_not_fatal(tmp_path, corpus_dir, in1k):
    image = next(iter(wds.WebDataset(str(sorted(corpus_dir.glob("train-*.tar"))[0]), shardshuffle=False)))[
        "jpg"
    ]
    table = write_posts(tmp_path, image)
    stats = build([table], tmp_path / "out", in1k, Columns(), BuildOptions(val_fraction=0.0))
    assert stats["written"] == {"train": 2, "val": 0}
    assert stats["dropped"] == {
        "malformed_row": 2, "missing_image": 1, "unreadable_image": 2, "no_vocabulary_hashtag": 2,
        "no_image_reference": 1, "no_caption_or_hashtags": 1,
    }  # fmt: skip
    assert stats["dropped_examples"]["missing_image"] == ["missing"]
    assert stats["posts_read"] == 11
    # 'huge' keeps only the first 20,000 characters of its caption, so its hashtag is not seen
    assert "huge" in stats["dropped_examples"]["no_vocabulary_hashtag"]


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_same_input_gives_byte_identical_output(tmp_path, synthetic_dir, in1k):
    inputs = expand_inputs(str(synthetic_dir / "posts" / "*.jsonl"))
    options = BuildOptions(shard_size=50, val_fraction=0.1)
    build(inputs, tmp_path / "a", in1k, Columns(), options)
    build(inputs, tmp_path / "b", in1k, Columns(), options)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_csv_and_jsonl_tables_give_the_same_shards(tmp_path, synthetic_dir, in1k):
    jsonl = sorted((synthetic_dir / "posts").glob("*.jsonl"))[0]
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    table = synthetic_dir / "posts" / "same-as-first.csv"  # beside the images, so relative paths hold
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["key", "image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    try:
        options = BuildOptions(shard_size=1000, val_fraction=0.0)
        build([jsonl], tmp_path / "jsonl", in1k, Columns(), options)
        build([table], tmp_path / "csv", in1k, Columns(), options)
    finally:
        table.unlink()
    a, b = digest(tmp_path / "jsonl"), digest(tmp_path / "csv")
    assert a["train-000000.tar"] == b["train-000000.tar"] and a["vocab.json"] == b["vocab.json"]


def test_min_count_drops_rare_labels(tmp_path, synthetic_dir, in1k):
    inputs = expand_inputs(str(synthetic_dir / "posts" / "*.jsonl"))
    counts = {
        label["wnid"]: label["train_images"]
        for label in build_and_read_vocab(inputs, tmp_path / "all", in1k, 1)
    }
    threshold = sorted(counts.values())[len(counts) // 2]
    kept = build_and_read_vocab(inputs, tmp_path / "common", in1k, threshold)
    assert 0 < len(kept) < len(counts)
    with pytest.raises(ValueError, match="min_count"):
        build(inputs, tmp_path / "none", in1k, Columns(), BuildOptions(min_count=10_000))


def build_and_read_vocab(inputs, out, vocab, min_count):
    stats = build(inputs, out, vocab, Columns(), BuildOptions(min_count=min_count, val_fraction=0.0))
    assert stats["dropped"].get("rare_labels_only", 0) >= 0
    return json.loads((out / "vocab.json").read_text())["labels"]


def test_no_matching_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_inputs(str(tmp_path / "*.jsonl"))


def test_custom_column_names(tmp_path, corpus_dir):
    image = next(iter(wds.WebDataset(str(sorted(corpus_dir.glob("train-*.tar"))[0]), shardshuffle=False)))[
        "jpg"
    ]
    (tmp_path / "a.jpg").write_bytes(image)
    (tmp_path / "t.jsonl").write_text(json.dumps({"id": "p1", "file": "a.jpg", "text": "#goldfish"}) + "\n")
    vocab = build_vocabulary("wnids", ["n01443537"])
    stats = build([tmp_path / "t.jsonl"], tmp_path / "out", vocab, Columns(key="id", image="file", caption="text"),
                  BuildOptions(val_fraction=0.0))  # fmt: skip
    assert stats["written"]["train"] == 1
