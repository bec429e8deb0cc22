import csv
import hashlib
import io
import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import webdataset as wds

from wsp.corpus.build import BuildOptions, CorpusBuilder, CorpusError, build, expand_inputs, hashtags_of
from wsp.corpus.posts import Columns, read_posts
from wsp.hashtags.vocab import build_vocabulary


def read_shards(directory: Path, prefix: str = "train", decode: bool = True) -> list[dict]:
    urls = [str(p) for p in sorted(directory.glob(f"{prefix}-*.tar"))]
    dataset = wds.WebDataset(urls, shardshuffle=False)
    return list(dataset.decode() if decode else dataset)


def digest(directory: Path) -> dict[str, str]:
    """Content hash of every output file (the resumable-build cache in _work/ aside)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()
    }


def synthetic_posts(synthetic_dir: Path) -> list[Path]:
    return expand_inputs(str(synthetic_dir / "posts" / "*.jsonl"))


def test_shards_round_trip_labels_hashtags_and_metadata(corpus_dir, synthetic_dir):
    vocab = json.loads((corpus_dir / "vocab.json").read_text())
    sizes = json.loads((corpus_dir / "sizes.json").read_text())
    samples = read_shards(corpus_dir) + read_shards(corpus_dir, "val")
    assert len(samples) == sum(sizes.values())
    posts = {p.key: p for path in synthetic_posts(synthetic_dir) for p in read_posts(path, Columns())}
    names = [label["name"] for label in vocab["labels"]]
    for sample in samples:
        meta = sample["json"]
        assert meta["labels"] == sorted(set(meta["labels"])) and meta["labels"]
        assert meta["label_names"] == [names[i] for i in meta["labels"]]
        assert meta["hashtags"] == hashtags_of(posts[meta["source"]], 64)


def test_image_bytes_pass_through_unchanged(corpus_dir, synthetic_dir):
    for sample in read_shards(corpus_dir, decode=False)[:30]:
        source = json.loads(sample["json"])["source"]
        assert sample["jpg"] == (synthetic_dir / "posts" / "images" / f"{source}.jpg").read_bytes()


def test_stats_vocab_info_and_zipf_plot(corpus_dir):
    stats = json.loads((corpus_dir / "stats.json").read_text())
    vocab = json.loads((corpus_dir / "vocab.json").read_text())
    info = json.loads((corpus_dir / "_info.json").read_text())
    assert stats["posts_read"] == sum(stats["written"].values()) + sum(stats["dropped"].values())
    assert stats["labels"]["kept"] == len(vocab["labels"]) == info["num_classes"] == 6
    assert info["label_names"] == [label["wnid"] for label in vocab["labels"]]
    assert sum(label["train_frequency"] for label in vocab["labels"]) == pytest.approx(
        stats["written"]["train"]
    )
    assert (corpus_dir / "zipf.png").stat().st_size > 5_000


def write_bad_posts(tmp_path: Path, image: bytes) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    (images / "good.jpg").write_bytes(image)
    (images / "bad.jpg").write_bytes(b"not a jpeg at all")
    (images / "truncated.jpg").write_bytes(image[: len(image) // 2])
    (images / "garbage.jpg").write_bytes(image[:3] + b"\x00" * 500 + b"\xff\xd9")
    rows = [
        {"key": "good", "image": "images/good.jpg", "caption": "#brownbear 🐻 #love"},
        {"key": "also_good", "image": "images/good.jpg", "hashtags": ["Ursus_arctos", "goldfish"]},
        {"key": "missing", "image": "images/nowhere.jpg", "caption": "#brownbear"},
        {"key": "corrupt", "image": "images/bad.jpg", "caption": "#goldfish"},
        {"key": "truncated", "image": "images/truncated.jpg", "caption": "#goldfish"},
        {"key": "garbage", "image": "images/garbage.jpg", "caption": "#goldfish"},
        {"key": "offvocab", "image": "images/good.jpg", "caption": "#love #😀 \x00\x01"},
        {"key": "emojionly", "image": "images/good.jpg", "caption": "#😀😀 #🐻"},
        {"key": "noimage", "caption": "#goldfish"},
        {"key": "notext", "image": "images/good.jpg"},
        {"key": "huge", "image": "images/good.jpg", "caption": "x" * 50_000 + " #goldfish"},
    ]
    table = tmp_path / "posts.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows) + "\n{this is not json\n[1, 2]\n\n")
    (tmp_path / "empty.jsonl").write_text("")
    return table


def first_image(corpus_dir: Path) -> bytes:
    return read_shards(corpus_dir, decode=False)[0]["jpg"]


@pytest.mark.parametrize(("verify", "garbage_written"), [("decode", 0), ("header", 1)])
def test_bad_inputs_are_counted_not_fatal(tmp_path, corpus_dir, in1k, verify, garbage_written):
    """`header` checks containers only: a JPEG with a garbage body passes (the loader skips and counts it)."""
    write_bad_posts(tmp_path, first_image(corpus_dir))
    options = BuildOptions(val_fraction=0.0, max_error_rate=1.0, verify_images=verify)
    stats = build(expand_inputs(str(tmp_path / "*.jsonl")), tmp_path / "out", in1k, Columns(), options)
    assert stats["written"] == {"train": 2 + garbage_written, "val": 0}
    assert stats["dropped"] == {
        "malformed_row": 2, "missing_image": 1, "unreadable_image": 2 - garbage_written, "truncated_image": 1,
        "no_vocabulary_hashtag": 3, "no_image_reference": 1, "no_caption_or_hashtags": 1,
    }  # fmt: skip
    assert stats["dropped_examples"]["missing_image"] == ["missing"]
    assert (
        stats["posts_read"] == 13 and stats["errors"] == 7 - garbage_written
    )  # a post without text is no error
    # 'huge' keeps only the first 20,000 characters of its caption, so its hashtag is not seen
    assert "huge" in stats["dropped_examples"]["no_vocabulary_hashtag"]


def test_too_much_bad_input_fails_the_build_with_the_reasons(tmp_path, corpus_dir, in1k):
    write_bad_posts(tmp_path, first_image(corpus_dir))
    with pytest.raises(CorpusError, match=r"broken \(corpus.max_error_rate=0.1\): malformed_row=2"):
        build([tmp_path / "posts.jsonl"], tmp_path / "out", in1k, Columns(), BuildOptions(max_error_rate=0.1))


def test_same_input_gives_byte_identical_output_with_any_worker_count(tmp_path, synthetic_dir, in1k):
    options = BuildOptions(shard_size=25, val_fraction=0.1, label_noise=0.1)
    build(synthetic_posts(synthetic_dir), tmp_path / "a", in1k, Columns(), options, workers=1)
    build(synthetic_posts(synthetic_dir), tmp_path / "b", in1k, Columns(), options, workers=2)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


BUILD_SCRIPT = """
import sys
from pathlib import Path
from wsp.corpus.build import BuildOptions, build, expand_inputs
from wsp.corpus.posts import Columns
from wsp.hashtags.vocab import build_vocabulary
build(expand_inputs(sys.argv[1]), Path(sys.argv[2]), build_vocabulary("in1k"), Columns(),
      BuildOptions(shard_size=7, val_fraction=0.1), workers=1)
"""


@pytest.mark.parametrize("kill_after_units", [0, 2])
def test_killed_build_resumes_to_the_same_bytes(tmp_path, synthetic_dir, in1k, kill_after_units):
    pattern = str(synthetic_dir / "posts" / "*.jsonl")
    clean = tmp_path / "clean"
    build(expand_inputs(pattern), clean, in1k, Columns(), BuildOptions(shard_size=7, val_fraction=0.1))
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, pattern, str(killed)])
    deadline = time.monotonic() + 120
    while len(list(killed.glob("_work/*/write-*.json"))) < kill_after_units or not list(
        killed.glob("*.tar*")
    ):
        assert process.poll() is None and time.monotonic() < deadline, (
            "build finished before it could be killed"
        )
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "sizes.json").exists()
    build(expand_inputs(pattern), killed, in1k, Columns(), BuildOptions(shard_size=7, val_fraction=0.1))
    assert digest(killed) == digest(clean)
    assert not list(killed.glob("*.tmp"))


def write_img2dataset_shard(jsonl: Path, out: Path) -> None:
    """The same posts in img2dataset's layout: {key}.jpg + {key}.json in a tar, {shard}_stats.json."""
    with tarfile.open(out / "00000.tar", "w") as tar:
        for line in jsonl.read_text().splitlines():
            row = json.loads(line)
            image = (jsonl.parent / row["image"]).read_bytes()
            meta = json.dumps(
                {"key": row["key"], "caption": row["caption"], "url": "http://x", "status": "success"}
            )
            for name, data in ((f"{row['key']}.jpg", image), (f"{row['key']}.json", meta.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (out / "00000_stats.json").write_text(json.dumps({"successes": 60, "failed_to_download": 4}))


def test_img2dataset_parquet_csv_and_jsonl_inputs_give_the_same_shards(tmp_path, synthetic_dir, in1k):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = synthetic_posts(synthetic_dir)[0]
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    posts = tmp_path / "posts"
    posts.symlink_to(synthetic_dir / "posts")  # tables beside the images, so relative paths resolve
    tables = tmp_path / "tables"
    tables.mkdir()
    with (tables / "posts.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["key", "image", "caption"])
        writer.writeheader()
        writer.writerows({**r, "image": str(posts / r["image"])} for r in rows)
    pq.write_table(pa.Table.from_pylist([{**r, "image": (posts / r["image"]).read_bytes()} for r in rows]),
                   tables / "posts.parquet")  # fmt: skip
    shards = tmp_path / "downloaded"
    shards.mkdir()
    write_img2dataset_shard(jsonl, shards)

    options = BuildOptions(shard_size=1000, val_fraction=0.1)
    outputs = {}
    for name, source in [("jsonl", jsonl), ("csv", tables / "posts.csv"), ("parquet", tables / "posts.parquet"),
                         ("img2dataset", shards / "00000.tar")]:  # fmt: skip
        stats = build([source], tmp_path / name, in1k, Columns(), options)
        outputs[name] = {
            k: v for k, v in digest(tmp_path / name).items() if k.endswith(".tar") or k == "vocab.json"
        }
    assert outputs["jsonl"] == outputs["csv"] == outputs["parquet"] == outputs["img2dataset"]
    assert stats["source_failures"] == {"failed_to_download": 4}


def test_a_corrupt_img2dataset_shard_is_counted(tmp_path, in1k):
    (tmp_path / "00000.tar").write_bytes(b"\x00" * 100 + b"not a tar" * 100)
    with pytest.raises(CorpusError, match="corrupt_shard=1"):
        build([tmp_path / "00000.tar"], tmp_path / "out", in1k, Columns(), BuildOptions())


def test_label_noise_rate_and_never_a_label_for_itself(tmp_path, synthetic_dir, in1k):
    options = BuildOptions(val_fraction=0.0, label_noise=0.25, seed=3)
    stats = build(synthetic_posts(synthetic_dir), tmp_path, in1k, Columns(), options)
    changed = total = 0
    for sample in read_shards(tmp_path):
        meta = sample["json"]
        clean, noisy = meta["clean_labels"], meta["labels"]
        total += len(clean)
        changed += len(set(clean) - set(noisy))
    assert stats["label_noise"]["rate"] == pytest.approx(0.25, abs=0.05)  # 240 posts: sampling error ~3%
    assert changed <= stats["label_noise"]["replaced"] <= total


def test_label_noise_injector_statistics():
    import numpy as np

    from wsp.corpus.noise import LabelNoise

    marginal = np.array([0.5, 0.3, 0.15, 0.05])
    noise = LabelNoise(0.1, marginal, seed=0)
    replaced = drawn = 0
    histogram = np.zeros(4)
    for i in range(40_000):
        original = [i % 4]
        result = noise.apply(original, f"post{i}")
        assert len(result.replaced) == 1
        if result.replaced[0] != original[0]:
            replaced += 1
            histogram[result.replaced[0]] += 1
        drawn += 1
        assert noise.apply(original, f"post{i}") == result  # seeded by key
    assert replaced / drawn == pytest.approx(0.1, abs=0.01)
    # a replacement never equals the label it replaces (checked above) and follows the marginal elsewhere
    expected = np.array(
        [sum(marginal[j] / (1 - marginal[k]) for k in range(4) if k != j) / 4 for j in range(4)]
    )
    assert histogram / histogram.sum() == pytest.approx(expected, abs=0.02)


def test_min_count_and_max_labels_select_labels(tmp_path, synthetic_dir, in1k):
    inputs = synthetic_posts(synthetic_dir)

    def kept(out, **kw):
        build(inputs, tmp_path / out, in1k, Columns(), BuildOptions(val_fraction=0.0, **kw))
        return json.loads((tmp_path / out / "vocab.json").read_text())["labels"]

    everything = kept("all")
    posts = sorted(label["posts"] for label in everything)
    assert 0 < len(kept("common", min_count=posts[len(posts) // 2])) < len(everything)
    top = kept("top2", max_labels=2)
    assert {label["wnid"] for label in top} == {
        label["wnid"] for label in sorted(everything, key=lambda label: -label["posts"])[:2]
    }
    with pytest.raises(CorpusError, match="min_count"):
        build(inputs, tmp_path / "none", in1k, Columns(), BuildOptions(min_count=10_000))


def test_excluded_keys_are_dropped_and_counted(tmp_path, synthetic_dir, in1k):
    options = BuildOptions(val_fraction=0.0, exclude=("0000000", "0000001"))
    stats = build(synthetic_posts(synthetic_dir), tmp_path, in1k, Columns(), options)
    assert stats["dropped"]["excluded"] == 2
    assert not {"0000000", "0000001"} & {s["json"]["source"] for s in read_shards(tmp_path)}


def test_subsets_are_nested_random_and_keep_every_val_post(tmp_path, synthetic_dir, in1k):
    inputs = synthetic_posts(synthetic_dir)

    def keys(share: float, split: str) -> set[str]:
        out = tmp_path / str(share)
        stats = build(inputs, out, in1k, Columns(), BuildOptions(val_fraction=0.2, subset=share))
        if share < 1:
            assert stats["dropped"]["outside_subset"] > 0
        return {s["json"]["source"] for s in read_shards(out, split, decode=True)}

    train = {share: keys(share, "train") for share in (0.25, 0.5, 1.0)}
    assert train[0.25] < train[0.5] < train[1.0]
    for share in (0.25, 0.5):
        assert abs(len(train[share]) / len(train[1.0]) - share) < 0.08
    drawn, last = sorted(map(int, train[0.25])), max(map(int, train[1.0]))
    assert drawn[0] < 0.1 * last and drawn[-1] > 0.9 * last  # drawn across the corpus, not a prefix
    assert keys(0.25, "val") == keys(1.0, "val")


def test_stages_run_as_separate_jobs_give_the_same_corpus(tmp_path, synthetic_dir, in1k, monkeypatch):
    inputs = synthetic_posts(synthetic_dir)
    options = BuildOptions(shard_size=20)
    build(inputs, tmp_path / "one", in1k, Columns(), options)
    staged = CorpusBuilder(inputs, tmp_path / "staged", in1k, Columns(), options)
    with pytest.raises(CorpusError, match="count step has not run"):
        staged.run("vocab")
    for part in (1, 0):
        staged.run("count", part=part, num_parts=2)
    staged.run("vocab")
    # The write step takes each post's hashtags from the count step (part 1 runs with no caption parser),
    # or parses the captions again where the count step's hashtags are gone (part 0's, deleted).
    for unit in range(0, len(inputs), 2):
        (staged.work / f"hashtags-{unit:05d}.txt").unlink()
    staged.run("write", part=0, num_parts=2)
    with monkeypatch.context() as patch:
        patch.setattr("wsp.corpus.build.hashtags_of", lambda *args: pytest.fail("a caption parsed again"))
        staged.run("write", part=1, num_parts=2)
    staged.run("finalize")
    assert digest(tmp_path / "staged") == digest(tmp_path / "one")
    assert not list(staged.work.glob("hashtags-*"))  # freed once written


def test_no_matching_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_inputs(str(tmp_path / "*.jsonl"))


def test_custom_column_names(tmp_path, corpus_dir):
    (tmp_path / "a.jpg").write_bytes(first_image(corpus_dir))
    (tmp_path / "t.jsonl").write_text(json.dumps({"id": "p1", "file": "a.jpg", "text": "#goldfish"}) + "\n")
    vocab = build_vocabulary("wnids", ["n01443537"])
    stats = build([tmp_path / "t.jsonl"], tmp_path / "out", vocab, Columns(key="id", image="file", caption="text"),
                  BuildOptions(val_fraction=0.0))  # fmt: skip
    assert stats["written"]["train"] == 1


def test_awkward_keys_bom_and_zero_key(tmp_path, corpus_dir, in1k):
    (tmp_path / "a.jpg").write_bytes(first_image(corpus_dir))
    long_key = "https://example.com/" + "x" * 200 + ".jpg"
    with (tmp_path / "t.csv").open("w", encoding="utf-8-sig", newline="") as f:  # spreadsheet export: BOM
        writer = csv.DictWriter(f, fieldnames=["key", "image", "caption"])
        writer.writeheader()
        writer.writerows([{"key": long_key, "image": "a.jpg", "caption": "#goldfish"},
                          {"key": "a.b/c", "image": "a.jpg", "caption": "#goldfish"}])  # fmt: skip
    (tmp_path / "z.jsonl").write_text(json.dumps({"key": 0, "image": "a.jpg", "caption": "#goldfish"}) + "\n")
    build(
        [tmp_path / "t.csv", tmp_path / "z.jsonl"],
        tmp_path / "out",
        in1k,
        Columns(),
        BuildOptions(val_fraction=0.0),
    )
    sources = sorted(s["json"]["source"] for s in read_shards(tmp_path / "out"))
    assert sources == sorted(["0", long_key, "a.b/c"])


def test_truncated_tar_and_corrupt_parquet_are_counted(tmp_path, synthetic_dir, in1k):
    jsonl = synthetic_posts(synthetic_dir)[0]
    write_img2dataset_shard(jsonl, tmp_path)
    whole = (tmp_path / "00000.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(whole[: len(whole) // 2 // 512 * 512])  # cut at a header boundary
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 definitely not parquet")
    inputs = [tmp_path / "00000.tar", tmp_path / "00001.tar", tmp_path / "bad.parquet"]
    stats = build(inputs, tmp_path / "out", in1k, Columns(), BuildOptions(max_error_rate=1.0))
    assert stats["dropped"]["corrupt_shard"] == 2


def test_unsupported_input_files_are_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="no supported type"):
        expand_inputs(str(tmp_path / "*"))
