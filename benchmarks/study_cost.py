"""GPU-days of each study at full scale: images processed (the paper's schedule rule) x cost per image.

    .venv/bin/python benchmarks/study_cost.py                      # at the paper's own GPU throughput
    .venv/bin/python benchmarks/study_cost.py --macs-per-s 2.0e13  # at a rate measured on your GPU

Cost per training image: 3 x the model's forward mult-adds at 224 px (forward + backward), counted by
wsp.models.stats on the real timm models. Throughput, by default, is the paper's: ResNeXt-101 32x16d,
2 epochs over 3.5B images (7.0B images) in about 22 days on 336 GPUs, i.e. 11.0 images/s per GPU, or
3 x 36.2 G x 11.0 = 1.19e12 mult-adds/s per GPU. A rate measured with benchmarks/gpu.py (images/s x
3 x mult-adds) replaces it with --macs-per-s.

Pretraining length is the schedule rule (wsp.utils.schedule, linear in N by default; `--interpolation
log` for the alternative) on the paper's corpus sizes where it names them (IG-940M-1.5k for the headline
and capacity; for data size, shares of IG-3.5B-17k and of IG-940M-1.5k); the ablations (vocabulary,
resampling, label noise, loss) assume a 1B-image corpus, which the paper's supplementary fixes per
experiment (?). Transfer: fine-tuning is 30 epochs of ImageNet-1k; the ImageNet-only models train for
the rule at 1.28M images (113 epochs); a probe is one forward pass over train + val per target.

It first prints the rule itself: images processed, epochs and steps (at the paper's 8,064 per step)
at the corpus sizes the studies use.
"""

from __future__ import annotations

import argparse

from wsp.utils.schedule import INTERPOLATIONS, paper_schedule_images

PAPER_MACS_PER_S = 3 * 36.16e9 * 7.0e9 / (22 * 86400 * 336)
IN1K, IN5K, IN9K = 1.33e6, 6.6e6, 10.5e6  # train + val images of each probe target (IN-5k/9k: approximate)
IN1K_TRAIN = 1_281_167
ABLATION_CORPUS = 1.0e9  # (?)
PAPER_BATCH = 8064  # 336 GPUs x 24
SCHEDULE_SIZES = (IN1K_TRAIN, 3.5e6, 35e6, 350e6, 940e6, 1e9, 3.5e9)


def jobs(interpolation: str) -> dict[str, list[tuple[str, float, float, float]]]:
    """study -> [(model, images processed in pretraining, training images besides, forward-only images)]."""

    def rule(corpus: float) -> int:
        return paper_schedule_images(round(corpus), interpolation)

    finetune, scratch = 30 * IN1K_TRAIN, rule(IN1K_TRAIN)
    widths = ["4", "8", "16", "32", "48"]
    return {
        "headline": [("32x48d", rule(940e6), finetune, 0)],
        "capacity": [(f"32x{w}d", rule(940e6), finetune, 0) for w in widths]
        + [(f"32x{w}d", 0, scratch, 0) for w in widths],
        "data_size": [
            (f"32x{w}d", rule(corpus * share), 0, IN1K + IN5K + IN9K)
            for w in ("4", "8", "16")
            for corpus in (3.5e9, 940e6)  # IG-3.5B-17k, IG-940M-1.5k
            for share in (0.001, 0.01, 0.1, 1.0)
        ],  # fmt: skip
        "vocabulary": [("32x16d", rule(ABLATION_CORPUS), 0, IN1K + IN5K + IN9K)] * 3,
        "resampling": [("32x16d", rule(ABLATION_CORPUS), 0, IN1K)] * 3,
        "label_noise": [("32x16d", rule(ABLATION_CORPUS), 0, IN1K)] * 4,
        "loss": [("32x16d", rule(ABLATION_CORPUS), 0, IN1K)] * 2,
    }


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

    from wsp.models.stats import model_stats

    macs = {}
    print(f"\nthroughput: {args.macs_per_s:.3g} mult-adds/s per GPU\n")
    print("| study | jobs | images processed (pretraining) | GPU-days |")
    print("|---|---|---|---|")
    for study, planned in jobs(args.interpolation).items():
        images = gpu_days = 0.0
        for model, pretraining, trained, forward in planned:
            if model not in macs:
                macs[model] = model_stats(f"resnext101_{model}", 224, 1000)[1]
            images += pretraining
            work = macs[model] * (3 * (pretraining + trained) + forward)
            gpu_days += work / args.macs_per_s / 86400
        print(f"| {study} | {len(planned)} | {images:.3g} | {gpu_days:,.0f} |")


if __name__ == "__main__":
    main()
