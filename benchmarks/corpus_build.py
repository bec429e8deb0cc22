"""Corpus-build throughput (posts/s per core, image bytes passed through) and peak memory vs corpus size.

    .venv/bin/python benchmarks/corpus_build.py throughput --posts 20000 --image-size 640
    .venv/bin/python benchmarks/corpus_build.py memory --sizes 2000 20000 200000

Posts are JSON Lines tables whose captions mix lemma spellings, off-vocabulary tags and emoji (the
synthetic generator's), each referencing one of 64 distinct JPEGs on disk (so the build reads and
copies real image bytes without the benchmark spending minutes rendering images). Both passes run
in one process (`workers=1`); `memory` runs each size in a fresh process and reports its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DISTINCT_IMAGES = 64
POSTS_PER_TABLE = 10_000


def write_posts(root: Path, posts: int, image_size: int) -> Path:
    from wsp.corpus.synthetic import caption, choose_concepts, render
    from wsp.hashtags.vocab import build_vocabulary

    concepts = choose_concepts(build_vocabulary("in1k"), 24, 1.0, seed=0)
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(DISTINCT_IMAGES):
        (images / f"{i}.jpg").write_bytes(render([concepts[i % 24]], image_size, rng))
    for start in range(0, posts, POSTS_PER_TABLE):
        with (root / f"posts-{start // POSTS_PER_TABLE:05d}.jsonl").open("w") as table:
            for i in range(start, min(posts, start + POSTS_PER_TABLE)):
                text = caption([concepts[i % 24]], concepts, rng, 0.2, 0.1)
                table.write(json.dumps({"key": f"{i:09d}", "image": f"images/{i % DISTINCT_IMAGES}.jpg",
                                        "caption": text}) + "\n")  # fmt: skip
    return root


def build_once(posts_dir: Path, output: Path) -> dict:
    from wsp.corpus.build import BuildOptions, build, expand_inputs
    from wsp.corpus.posts import Columns
    from wsp.hashtags.vocab import build_vocabulary

    vocabulary = build_vocabulary("in1k")
    start = time.perf_counter()
    stats = build(
        expand_inputs(str(posts_dir / "*.jsonl")), output, vocabulary, Columns(), BuildOptions(), workers=1
    )
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"posts": stats["posts_read"], "seconds": seconds, "posts_per_s": stats["posts_read"] / seconds,
            "peak_rss_mib": peak_mib, "written": stats["written"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["throughput", "memory", "_child"])
    parser.add_argument("--posts", type=int, default=20_000)
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000, 20_000, 200_000])
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    if args.mode == "_child":
        print(json.dumps(build_once(args.dir, args.dir / "corpus")))
        return
    sizes = [args.posts] if args.mode == "throughput" else args.sizes
    image_size = args.image_size if args.mode == "throughput" else 80
    for size in sizes:
        root = Path(tempfile.mkdtemp(prefix="wsp-bench-"))
        try:
            write_posts(root, size, image_size)
            done = subprocess.run([sys.executable, __file__, "_child", "--dir", str(root)], capture_output=True,
                                  text=True, check=True)  # fmt: skip
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{size:>9,} posts, {image_size}px JPEGs: {result['posts_per_s']:,.0f} posts/s on one core "
                  f"({result['seconds']:.1f} s), peak RSS {result['peak_rss_mib']:.0f} MiB")  # fmt: skip
        finally:
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
