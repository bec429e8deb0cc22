import csv
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from wsp.config import ConfigError
from wsp.corpus.build import BuildOptions, build, expand_inputs
from wsp.corpus.dedup import NearestNeighbours, hamming, perceptual_hash
from wsp.corpus.posts import Columns
from wsp.corpus.synthetic import choose_concepts, render
from wsp.tasks import run_task


def corpus_image(corpus_dir, index):
    import webdataset as wds

    sample = list(wds.WebDataset(str(sorted(corpus_dir.glob("train-*.tar"))[0]), shardshuffle=False))[index]
    return json.loads(sample["json"])["source"], sample["jpg"]


def reencoded(data: bytes, size: int, quality: int) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").resize((size, size)).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def plant_eval_folder(tmp_path, exact: bytes, near: bytes, in1k):
    """An exact copy, a resized and re-encoded copy, an unrelated and a broken image."""
    folder = tmp_path / "eval" / "n01443537"
    folder.mkdir(parents=True)
    (folder / "exact.jpg").write_bytes(exact)
    (folder / "near.jpg").write_bytes(reencoded(near, 120, 70))
    concepts = choose_concepts(in1k, 6, 1.0, seed=0)
    (folder / "unrelated.jpg").write_bytes(render([concepts[0]], 48, np.random.default_rng(999)))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return tmp_path / "eval"


def read_matches(result) -> tuple[list[dict], dict]:
    with open(result["matches"], newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, {(r["eval_image"].rsplit("/", 1)[1], r["method"]): r for r in rows}


def test_perceptual_hash_survives_resizing_and_recompression(corpus_dir):
    _, data = corpus_image(corpus_dir, 3)
    _, other = corpus_image(corpus_dir, 4)
    original = perceptual_hash(Image.open(io.BytesIO(data)))
    copy = perceptual_hash(Image.open(io.BytesIO(reencoded(data, 100, 60))))
    different = perceptual_hash(Image.open(io.BytesIO(other)))
    assert hamming(np.array([original], dtype=np.uint64), copy)[0] <= 6
    assert hamming(np.array([original], dtype=np.uint64), different)[0] > 6


def normalised(rng, *shape):
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_nearest_neighbours_in_chunks_are_the_exact_top_k():
    rng = np.random.default_rng(0)
    queries, corpus = normalised(rng, 5, 8), normalised(rng, 40, 8)
    ids = np.arange(40, dtype=np.int64) * 1000 + 7  # any ids: the scan's are shard << 32 | position
    streamed = NearestNeighbours(queries, k=3, chunk=10)
    for start in range(0, 40, 7):  # batches that straddle chunks
        streamed.add(corpus[start : start + 7], ids[start : start + 7])
    scores, found = streamed.finish()
    exact = np.argsort(-(queries @ corpus.T), axis=1)[:, :3]
    assert np.array_equal(found, ids[exact])
    assert np.allclose(scores, np.take_along_axis(queries @ corpus.T, exact, axis=1), atol=1e-6)
    small = NearestNeighbours(queries, k=3)
    small.add(corpus[:2], ids[:2])
    assert (small.finish()[1][:, 2] == -1).all()  # a corpus smaller than k pads with -1


@pytest.fixture
def tiny_weights(tmp_path):
    import torch

    from wsp.models.backbones import create_backbone, export_backbone

    torch.manual_seed(0)
    return export_backbone(create_backbone("wsp_resnext_tiny"), tmp_path / "backbone.safetensors")


def test_dedup_finds_copies_writes_sheets_and_the_corpus_drops_them(tmp_path, compose_config, corpus_dir, in1k,
                                                                      synthetic_dir, tiny_weights):  # fmt: skip
    exact_key, exact = corpus_image(corpus_dir, 0)
    near_key, near = corpus_image(corpus_dir, 5)
    eval_root = plant_eval_folder(tmp_path, exact, near, in1k)
    sizes = json.loads((corpus_dir / "sizes.json").read_text())
    cfg = compose_config("task=dedup", f"task.corpus={corpus_dir}", f"task.eval=[{eval_root}]", "logger=csv",
                         "task.methods=[exact,phash,embedding]", f"backbone.weights={tiny_weights}",
                         "task.threshold=0.0", "task.k=5", "model.image_size=32", "task.num_workers=2")  # fmt: skip
    result = run_task(cfg)
    rows, found = read_matches(result)
    assert found[("exact.jpg", "exact")]["corpus_key"] == exact_key
    assert found[("near.jpg", "phash")]["corpus_key"] == near_key
    assert ("unrelated.jpg", "phash") not in found and ("unrelated.jpg", "exact") not in found
    near_embedding = [r for r in rows if r["eval_image"].endswith("near.jpg") and r["method"] == "embedding"]
    assert len(near_embedding) == 5
    assert max(near_embedding, key=lambda r: float(r["score"]))["corpus_key"] == near_key
    assert not any(r["eval_image"].endswith("broken.jpg") for r in rows)
    assert result["eval_images_undecodable"] == 1
    assert result["corpus_images"] == sum(sizes.values()) and result["corpus_images_undecodable"] == 0
    assert result["contact_sheets"] == 3  # every readable eval image has neighbours at threshold 0
    assert len(list((tmp_path / "sheets").glob("*.png"))) == 3

    strict = compose_config("task=dedup", f"task.corpus={corpus_dir}", f"task.eval=[{eval_root}]", "logger=csv",
                            "task.num_workers=0", f"output_dir={tmp_path / 'strict'}")  # fmt: skip
    strict_result = run_task(strict)
    assert strict_result["matches_by_method"] == {"exact": 1, "phash": 2}  # the copy matches by phash too
    rebuilt = compose_config("task=corpus", f"corpus.input={synthetic_dir / 'posts' / '*.jsonl'}",
                             f"corpus.exclude={strict_result['matches']}", f"corpus.output={tmp_path / 'clean'}",
                             "corpus.shard_size=40", "corpus.val_fraction=0.1", f"output_dir={tmp_path / 'clean'}")  # fmt: skip
    run_task(rebuilt)
    stats = json.loads((tmp_path / "clean" / "stats.json").read_text())
    assert stats["dropped"]["excluded"] == 2


def replace_member(shard, name: str, data: bytes) -> None:
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for member, content in members:
            content = data if member.name == name else content
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))


def test_dedup_reads_reference_corpora_and_counts_undecodable_images(tmp_path, compose_config, synthetic_dir,
                                                                       in1k):  # fmt: skip
    """corpus.train_images=reference: train images are read from the img2dataset tars the .ref.json names."""
    from tests.corpus.test_build import synthetic_posts, write_img2dataset_shard

    downloaded, corpus = tmp_path / "downloaded", tmp_path / "corpus"
    downloaded.mkdir()
    write_img2dataset_shard(synthetic_posts(synthetic_dir)[0], downloaded)
    options = BuildOptions(val_fraction=0.1, train_images="reference")
    build([downloaded / "00000.tar"], corpus, in1k, Columns(), options)
    train = sorted(json.loads((corpus / "train-00000.ref.json").read_text())["labels"])
    with tarfile.open(downloaded / "00000.tar") as tar:
        image = {key: tar.extractfile(f"{key}.jpg").read() for key in train[:3]}
    exact_key, near_key, broken_key = train[:3]
    # Passes the build's header check (JPEG magic and end marker), fails to decode.
    garbage = image[broken_key][:3] + bytes(500) + b"\xff\xd9"
    replace_member(downloaded / "00000.tar", f"{broken_key}.jpg", garbage)
    eval_root = plant_eval_folder(tmp_path, image[exact_key], image[near_key], in1k)
    overrides = ("task=dedup", f"task.corpus={corpus}", f"task.eval=[{eval_root}]", "logger=csv")
    result = run_task(compose_config(*overrides))  # 2 loader workers (the config's)
    _, found = read_matches(result)
    assert found[("exact.jpg", "exact")]["corpus_key"] == exact_key
    assert found[("near.jpg", "phash")]["corpus_key"] == near_key
    sizes = json.loads((corpus / "sizes.json").read_text())
    assert result["corpus_images"] == sum(sizes.values()) > len(train)  # reference train shard and val tars
    assert result["corpus_images_undecodable"] == 1 and result["corpus_images_unread"] == 0

    (downloaded / "00000.tar").rename(downloaded / "moved.tar")  # the input tar the reference names is gone
    missing = run_task(compose_config(*overrides, "task.num_workers=0", f"output_dir={tmp_path / 'missing'}"))
    assert missing["corpus_images_unread"] == len(train)
    assert ("exact.jpg", "exact") not in read_matches(missing)[1]


def test_embedding_without_weights_is_refused_in_one_line(tmp_path, compose_config, corpus_dir):
    (tmp_path / "eval").mkdir()
    cfg = compose_config("task=dedup", f"task.corpus={corpus_dir}", f"task.eval=[{tmp_path / 'eval'}]",
                         "task.methods=[exact,embedding]", "logger=csv")  # fmt: skip
    with pytest.raises(ConfigError, match=r"^backbone.weights is required for task.methods=\[...,embedding\]: a "
                                          r"randomly initialised network is no duplicate detector") as err:  # fmt: skip
        run_task(cfg)
    assert "\n" not in str(err.value)


def test_dedup_excluded_keys_match_a_direct_build(tmp_path, synthetic_dir, in1k):
    stats = build(expand_inputs(str(synthetic_dir / "posts" / "*.jsonl")), tmp_path, in1k, Columns(),
                  BuildOptions(exclude=("0000003",)))  # fmt: skip
    assert stats["dropped"]["excluded"] == 1
