"""GPU training throughput and model FLOP utilisation (MFU) of the paper's ResNeXt-101s at 224 px:
bf16 autocast, channels_last, synthetic data, one full SGD step per batch, with and without torch.compile.

    .venv/bin/python benchmarks/gpu.py                     # 32x8d and 32x16d, ~5 min on one H100
    .venv/bin/python benchmarks/gpu.py --device cpu --models wsp_resnext_tiny --size 64 --batch 8 --seconds 3

MFU = (3 x forward flops per image, counted by torch's FlopCounter) x images/s / the GPU's peak dense bf16
flops (looked up by device name, or --peak-tflops). Results print as a table and go to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from wsp.models.classifier import Classifier
from wsp.models.losses import classification_loss
from wsp.models.stats import model_stats
from wsp.utils.compute import peak_tflops

OPTIM = dict(base_lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, decay_norm_and_bias=True)


def measure(name: str, size: int, batch: int, compiled: bool, seconds: float, device: torch.device) -> float:
    """Images/s of full training steps, after warm-up (and compilation) steps."""
    model = Classifier(name, 1000, OPTIM, channels_last=True, compile=compiled).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    targets = torch.softmax(torch.randn(batch, 1000, device=device), dim=1)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = classification_loss("softmax", model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(5):  # compilation, cudnn autotuning, allocator warm-up
        step()
    sync()
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        steps += 1
        if steps % 5 == 0:
            sync()
    sync()
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["resnext101_32x8d", "resnext101_32x16d"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64, help="per GPU (the paper: 24)")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per configuration")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in the table")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    peak = peak_tflops(device, args.peak_tflops)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{label}, torch {torch.__version__}, batch {args.batch}, {args.size}px, bf16, channels_last")
    print(f"{'model':20s} {'compile':8s} {'images/s':>9s} {'TFLOP/s':>8s} {'MFU':>6s}")
    rows = []
    for name in args.models:
        _, macs = model_stats(name, args.size, 1000)
        train_flops = 3 * 2 * macs  # backward ~ 2x forward
        for compiled in (False,) if args.no_compile else (False, True):
            rate = measure(name, args.size, args.batch, compiled, args.seconds, device)
            tflops = rate * train_flops / 1e12
            mfu = tflops / peak if peak else None
            rows.append(dict(model=name, compile=compiled, images_per_s=rate, tflops=tflops, mfu=mfu))
            mfu_text = f"{100 * mfu:5.1f}%" if mfu is not None else "   n/a"
            print(f"{name:20s} {compiled!s:8s} {rate:9.1f} {tflops:8.1f} {mfu_text}", flush=True)
    if args.out:
        with open(args.out, "w") as file:
            json.dump(
                {"device": label, "torch": torch.__version__, "batch": args.batch, "rows": rows},
                file,
                indent=1,
            )


if __name__ == "__main__":
    main()
