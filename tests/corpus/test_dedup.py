import csv
import io
import json

import numpy as np
from PIL import Image

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


def make_eval_folder(tmp_path, corpus_dir, in1k):
    folder = tmp_path / "eval" / "n01443537"
    folder.mkdir(parents=True)
    exact_key, exact = corpus_image(corpus_dir, 0)
    near_key, near = corpus_image(corpus_dir, 5)
    (folder / "exact.jpg").write_bytes(exact)
    (folder / "near.jpg").write_bytes(reencoded(near, 120, 70))
    concepts = choose_concepts(in1k, 6, 1.0, seed=0)
    (folder / "unrelated.jpg").write_bytes(render([concepts[0]], 48, np.random.default_rng(999)))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return tmp_path / "eval", exact_key, near_key


def test_perceptual_hash_survives_resizing_and_recompression(corpus_dir):
    _, data = corpus_image(corpus_dir, 3)
    _, other = corpus_image(corpus_dir, 4)
    original = perceptual_hash(Image.open(io.BytesIO(data)))
    copy = perceptual_hash(Image.open(io.BytesIO(reencoded(data, 100, 60))))
    different = perceptual_hash(Image.open(io.BytesIO(other)))
    assert hamming(np.array([original], dtype=np.uint64), copy)[0] <= 6
    assert hamming(np.array([original], dtype=np.uint64), different)[0] > 6


def test_nearest_neighbours_merge_batches_like_one_search():
    g = torch_generator()
    queries, corpus = g(5, 8), g(40, 8)
    streamed = NearestNeighbours(queries, k=3)
    for start in range(0, 40, 7):
        streamed.add(corpus[start : start + 7], [str(i) for i in range(start, min(start + 7, 40))])
    whole = NearestNeighbours(queries, k=3)
    whole.add(corpus, [str(i) for i in range(40)])
    assert streamed.keys == whole.keys


def torch_generator():
    import torch

    generator = torch.Generator().manual_seed(0)
    return lambda *shape: torch.randn(*shape, generator=generator)


def test_dedup_finds_copies_writes_sheets_and_the_corpus_drops_them(tmp_path, compose_config, corpus_dir, in1k,
                                                                      synthetic_dir):  # fmt: skip
    eval_root, exact_key, near_key = make_eval_folder(tmp_path, corpus_dir, in1k)
    cfg = compose_config("task=dedup", f"task.corpus={corpus_dir}", f"task.eval=[{eval_root}]", "logger=csv",
                         "task.threshold=0.0", "task.k=5", "model.image_size=32")  # fmt: skip
    result = run_task(cfg)
    with open(result["matches"], newline="") as f:
        rows = list(csv.DictReader(f))
    found = {(r["eval_image"].rsplit("/", 1)[1], r["method"]): r for r in rows}
    assert found[("exact.jpg", "exact")]["corpus_key"] == exact_key
    assert found[("near.jpg", "phash")]["corpus_key"] == near_key
    assert ("unrelated.jpg", "phash") not in found and ("unrelated.jpg", "exact") not in found
    near_embedding = [r for r in rows if r["eval_image"].endswith("near.jpg") and r["method"] == "embedding"]
    assert max(near_embedding, key=lambda r: float(r["score"]))["corpus_key"] == near_key
    assert not any(r["eval_image"].endswith("broken.jpg") for r in rows)
    assert result["contact_sheets"] == 3  # every readable eval image has neighbours at threshold 0
    assert len(list((tmp_path / "sheets").glob("*.png"))) == 3

    strict = compose_config("task=dedup", f"task.corpus={corpus_dir}", f"task.eval=[{eval_root}]", "logger=csv",
                            "task.methods=[exact,phash]", f"output_dir={tmp_path / 'strict'}")  # fmt: skip
    matches = run_task(strict)["matches"]
    rebuilt = compose_config("task=corpus", f"corpus.input={synthetic_dir / 'posts' / '*.jsonl'}",
                             f"corpus.exclude={matches}", f"corpus.output={tmp_path / 'clean'}", "corpus.shard_size=40",
                             "corpus.val_fraction=0.1", f"output_dir={tmp_path / 'clean'}")  # fmt: skip
    run_task(rebuilt)
    stats = json.loads((tmp_path / "clean" / "stats.json").read_text())
    assert stats["dropped"]["excluded"] == 2


def test_dedup_excluded_keys_match_a_direct_build(tmp_path, synthetic_dir, in1k):
    stats = build(expand_inputs(str(synthetic_dir / "posts" / "*.jsonl")), tmp_path, in1k, Columns(),
                  BuildOptions(exclude=("0000003",)))  # fmt: skip
    assert stats["dropped"]["excluded"] == 1
