"""task=dedup throughput on this CPU, through wsp.corpus.dedup.find_duplicates (what the task runs).

    .venv/bin/python benchmarks/dedup.py                                   # 200,000 corpus x 10,000 eval images
    .venv/bin/python benchmarks/dedup.py --corpus-images 20000 --eval-images 2000   # a quick run

- scan: `exact` + `phash` of the corpus (small photo-like JPEGs in real WebDataset tars, 1,000 per shard,
  written by the corpus's ShardSink with a sizes.json) against the eval folder, `--workers` loader
  workers: images/s (corpus and eval images together) and wall time. The eval folder holds `--planted`
  exact and as many resized, re-encoded copies of corpus images, which must all be found.
- embedding: the first `--embedding-images` corpus images through `--model` (random weights: the cost
  is the same) and the k-NN merge against the embeddings of `--embedding-eval-images` eval images.
- knn: the merge alone, `--queries` x `--dim` normalised features, k=21, a corpus of `--knn-corpus`
  vectors: torch matmul + concat + topk per loader batch (the previous code, without its key
  bookkeeping), faiss.knn + ResultHeap per loader batch, and per chunk of KNN_CHUNK vectors.

Generated images are cached under the temp folder (`--cache`), so a rerun measures the scan alone.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SHARD_SIZE = 1000


def photo(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth random colour field with a little noise: JPEG-like content in ~0.2 ms."""
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    noise = rng.integers(-8, 9, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, quality: int = 85) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def make_corpus(root: Path, images: int, size: int) -> Path:
    from wsp.corpus.shards import ShardSink

    corpus = root / f"corpus-{images}-{size}"
    if (corpus / "sizes.json").is_file():
        return corpus
    corpus.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sink = ShardSink(corpus, "train-00000", SHARD_SIZE)
    for i in range(images):
        key = f"post{i:08d}"
        sink.write({"__key__": key, "jpg": jpeg(photo(rng, size)), "json": {"source": key}})
    (corpus / "sizes.json").write_text(json.dumps(sink.close()))
    return corpus


def make_eval(root: Path, corpus: Path, images: int, size: int, planted: int) -> Path:
    """`images` eval images: distinct ones, `planted` exact copies and `planted` resized re-encodings."""
    from wsp.corpus.dedup import corpus_samples

    folder = root / f"eval-{images}-{size}-{planted}" / "val"
    if folder.is_dir():
        return folder.parent
    folder.mkdir(parents=True)
    for i, (key, data) in enumerate(corpus_samples(corpus)):
        if i == 2 * planted:
            break
        copy = data if i < planted else jpeg(Image.open(io.BytesIO(data)).resize((size + 16, size + 16)), 70)
        (folder / f"{'exact' if i < planted else 'near'}_{key}.jpg").write_bytes(copy)
    rng = np.random.default_rng(1)
    for i in range(images - 2 * planted):
        (folder / f"other_{i:06d}.jpg").write_bytes(jpeg(photo(rng, size)))
    return folder.parent


def scan(corpus: Path, eval_root: Path, workers: int, batch_size: int, planted: int) -> None:
    from wsp.corpus.dedup import corpus_shards, eval_images, find_duplicates

    paths = eval_images([str(eval_root)])
    shards, listed = corpus_shards(corpus)
    start = time.perf_counter()
    found = find_duplicates(paths, shards, ["exact", "phash"], phash_max_distance=4, embedder=None, threshold=0.95,
                            k=21, batch_size=batch_size, num_workers=workers)  # fmt: skip
    wall = time.perf_counter() - start
    exact = {m.eval_image for m in found.matches if m.method == "exact"}
    near = {m.eval_image for m in found.matches if m.method == "phash" and "/near_" in m.eval_image}
    assert found.corpus_images == listed, (found.corpus_images, listed)
    assert len(exact) == len(near) == planted, f"found {len(exact)} exact, {len(near)} re-encoded copies"
    print(f"scan exact+phash: {found.corpus_images:,} corpus x {len(paths):,} eval images, {workers} workers: "
          f"{wall:.1f} s, {(found.corpus_images + len(paths)) / wall:,.0f} images/s; found {planted} exact and "
          f"{planted} re-encoded copies, {len(found.matches) - 3 * planted} other matches")  # fmt: skip


def embedding(corpus: Path, eval_root: Path, model: str, image_size: int, images: int, queries: int,
              workers: int, batch_size: int) -> None:  # fmt: skip
    import torch

    from wsp.corpus.dedup import Embedder, corpus_shards, eval_images, find_duplicates
    from wsp.data.transforms import CentreCrop
    from wsp.models.backbones import create_backbone

    torch.manual_seed(0)
    embedder = Embedder(create_backbone(model), CentreCrop(image_size), torch.device("cpu"))
    paths = eval_images([str(eval_root)])[:queries]
    shards = corpus_shards(corpus)[0][: max(1, images // SHARD_SIZE)]
    start = time.perf_counter()
    find_duplicates(paths, [], ["embedding"], phash_max_distance=4, embedder=embedder, threshold=2.0, k=21,
                    batch_size=batch_size, num_workers=workers)  # fmt: skip
    eval_wall = time.perf_counter() - start
    found = find_duplicates(paths, shards, ["embedding"], phash_max_distance=4, embedder=embedder, threshold=2.0,
                            k=21, batch_size=batch_size, num_workers=workers)  # fmt: skip
    corpus_wall = time.perf_counter() - start - 2 * eval_wall  # each call embeds the eval set first
    print(f"embedding {model} {image_size} px + kNN (k=21, {len(paths):,} eval images, d={embedder.dim}), "
          f"{workers} workers: eval {len(paths) / eval_wall:,.0f} images/s; corpus {found.corpus_images:,} images "
          f"in {corpus_wall:.1f} s, {found.corpus_images / corpus_wall:,.0f} images/s")  # fmt: skip


def knn(queries: int, dim: int, corpus: int, batch: int) -> None:
    import faiss
    import torch

    from wsp.corpus.dedup import KNN_CHUNK, NearestNeighbours

    rng = np.random.default_rng(0)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    x = rng.standard_normal((corpus, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k = 21

    def torch_topk(step: int) -> np.ndarray:
        tq, scores = torch.from_numpy(q), torch.empty(queries, 0)
        ids = torch.empty(queries, 0, dtype=torch.long)
        for s in range(0, corpus, step):
            similarity = tq @ torch.from_numpy(x[s : s + step]).T
            new = torch.arange(s, min(s + step, corpus)).expand(queries, -1)
            top = torch.cat([scores, similarity], dim=1).topk(k, dim=1)
            scores, ids = top.values, torch.cat([ids, new], dim=1).gather(1, top.indices)
        return ids.numpy()

    def faiss_chunks(step: int) -> np.ndarray:
        nearest = NearestNeighbours(q, k, chunk=step)
        for s in range(0, corpus, batch):
            nearest.add(x[s : s + batch], np.arange(s, min(s + batch, corpus)))
        return nearest.finish()[1]

    reference = None
    print(f"knn merge: {queries:,} queries x {dim}-d, k={k}, corpus {corpus:,} vectors, {faiss.omp_get_max_threads()} "
          "threads")  # fmt: skip
    for name, run in [(f"torch matmul+topk per batch of {batch}", lambda: torch_topk(batch)),
                      (f"torch matmul+topk per chunk of {KNN_CHUNK}", lambda: torch_topk(KNN_CHUNK)),
                      (f"faiss.knn+ResultHeap per batch of {batch}", lambda: faiss_chunks(batch)),
                      (f"faiss.knn+ResultHeap per chunk of {KNN_CHUNK}", lambda: faiss_chunks(KNN_CHUNK))]:  # fmt: skip
        start = time.perf_counter()
        ids = run()
        wall = time.perf_counter() - start
        reference = ids if reference is None else reference
        same = np.mean(np.sort(ids, axis=1) == np.sort(reference, axis=1))
        print(f"  {name}: {wall:.2f} s, {corpus / wall:,.0f} corpus vectors/s (same neighbours: {same:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus-images", type=int, default=200_000)
    parser.add_argument("--eval-images", type=int, default=10_000)
    parser.add_argument("--image-size", type=int, default=96, help="of the generated JPEGs")
    parser.add_argument("--planted", type=int, default=50, help="exact and re-encoded copies in the eval set")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="wsp_resnext_tiny")
    parser.add_argument("--model-image-size", type=int, default=64)
    parser.add_argument("--embedding-images", type=int, default=5_000)
    parser.add_argument("--embedding-eval-images", type=int, default=2_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--knn-corpus", type=int, default=16_384)
    parser.add_argument(
        "--only", choices=["scan", "embedding", "knn"], nargs="+", default=["scan", "embedding", "knn"]
    )
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "wsp-dedup-bench")
    args = parser.parse_args()

    if {"scan", "embedding"} & set(args.only):
        start = time.perf_counter()
        corpus = make_corpus(args.cache, args.corpus_images, args.image_size)
        eval_root = make_eval(args.cache, corpus, args.eval_images, args.image_size, args.planted)
        print(f"data ready in {time.perf_counter() - start:.0f} s: {corpus}, {eval_root}")
    if "scan" in args.only:
        scan(corpus, eval_root, args.workers, args.batch_size, args.planted)
    if "embedding" in args.only:
        embedding(corpus, eval_root, args.model, args.model_image_size, args.embedding_images,
                  args.embedding_eval_images, args.workers, args.batch_size)  # fmt: skip
    if "knn" in args.only:
        knn(args.queries, args.dim, args.knn_corpus, args.batch_size)


if __name__ == "__main__":
    main()
