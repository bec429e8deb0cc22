"""GPU-days of each study at full scale (wsp.utils.compute), and the schedule rule's table.

    .venv/bin/python benchmarks/study_cost.py                      # at the paper's own GPU throughput
    .venv/bin/python benchmarks/study_cost.py --macs-per-s 2.0e13  # at a rate measured on your GPU
    .venv/bin/python benchmarks/study_cost.py --interpolation log  # the rule's log-N alternative

`python run.py task=preflight` measures the rate on your GPUs and prints the same table at it. The rule's
table: images processed, epochs and steps (at the paper's 8,064 per step) at the corpus sizes the
studies use.
"""

from __future__ import annotations

import argparse

from wsp.utils.compute import PAPER_BATCH, PAPER_MACS_PER_S, SCHEDULE_SIZES, study_gpu_days
from wsp.utils.schedule import INTERPOLATIONS, paper_schedule_images


def print_schedule(interpolation: str) -> None:
    print(f"schedule rule ({interpolation} in N), steps at {PAPER_BATCH:,} images per step:\n")
    print("| corpus images N | images processed | epochs | steps |")
    print("|---|---|---|---|")
    for n in SCHEDULE_SIZES:
        images = paper_schedule_images(round(n), interpolation)
        print(f"| {n:.3g} | {images:.3g} | {images / n:.3g} | {images / PAPER_BATCH:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--macs-per-s", type=float, default=PAPER_MACS_PER_S, help="per GPU, training")
    parser.add_argument(
        "--interpolation", choices=INTERPOLATIONS, default="linear", help="the schedule rule's"
    )
    args = parser.parse_args()
    print_schedule(args.interpolation)
    print(f"\nthroughput: {args.macs_per_s:.3g} mult-adds/s per GPU\n")
    print("| study | jobs | images processed (pretraining) | GPU-days |")
    print("|---|---|---|---|")
    for study, row in study_gpu_days(args.macs_per_s, args.interpolation).items():
        print(f"| {study} | {row['jobs']} | {row['images']:.3g} | {row['gpu_days']:,.0f} |")


if __name__ == "__main__":
    main()
