"""Whether the data path keeps up with training on the CPU, and what per-epoch validation costs.

The GPU measurements (the paper's Tables 4 and 6, fused trials, trials per GPU-hour) are in ``benchmarks/gpu.py``.

CPU part (always; ``torch.set_num_threads(--threads)``, 2 by default = the dev machine's cores): for each
dataset, examples/s of iterating ``train.batches(128, generator)`` with no model, against examples/s of one
forward + backward + SGD step of its model on a fixed batch (digits→tiny_cnn, natural→tiny_denoiser,
cifar100→resnet56, div2k→dncnn; standard convs, ``--width`` scales them). Target: loader ≥ 10× the step.
cifar100 and div2k read ``--cifar-root`` / ``--div2k-root`` when given, otherwise files generated in a temp
dir in the official formats and shapes (python-2 pickles of 50,000 + 10,000 random 32×32 images; 2040×1356
PNGs, few of them, with the real epoch of 11,520 patches). Step batches are smaller than the trainer's 128
on the CPU (``--cpu-step-batch``): a conv step's cost per example barely depends on the batch there.

Eval part (``--part eval``): the share of a denoising trial's epoch that per-epoch validation takes, with the
metrics validated before (PSNR, SSIM, NRMSE, UIQ) and now (``TrainingConfig.val_metrics`` default: PSNR,
SSIM, NRMSE; UIQ and FSIM at the final test only), for tiny_denoiser and a small DnCNN on ``natural``. Times
``train_epoch`` and ``validate`` of ``run_trial``'s own steps over ``--eval-epochs`` epochs after one warm-up.

    python benchmarks/throughput.py                      # both parts
    python benchmarks/throughput.py --part eval --threads 1
    python benchmarks/throughput.py --part cpu --width 0.5 --cpu-steps 3
"""

from __future__ import annotations

import argparse
import sys
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn as nn

from wconv import data, models

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from official_formats import write_cifar100, write_div2k  # noqa: E402  (shared with the tests)
from wconv.conv import param_groups
from wconv.train import TrainingConfig

DIV2K_PATCHES = 16 * 720
CPU_MODELS = {"digits": "tiny_cnn", "natural": "tiny_denoiser", "cifar100": "resnet56", "div2k": "dncnn"}
CPU_STEP_BATCH = {"digits": 128, "natural": 32, "cifar100": 32, "div2k": 8}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _endless(split, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``split`` epoch after epoch, as the trainer draws them (one CPU generator)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        yield from split.batches(batch_size, g)


def loader_throughput(split, batch_size: int, examples: int, repeats: int, device: torch.device) -> float:
    """Median over ``repeats`` passes of examples/s of drawing ``examples`` examples from ``split``."""
    rates = []
    batches = _endless(split, batch_size, 0)
    next(batches)  # first-call costs (allocator, lazy init) stay out
    for _ in range(repeats):
        n = 0
        _sync(device)
        start = time.perf_counter()
        while n < examples:
            n += len(next(batches)[0])
        _sync(device)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: nn.Module,
                  batches: Iterator, device: torch.device, amp: bool) -> Callable[[], int]:
    """One step of ``run_trial``'s loop (next batch, autocast forward, loss, backward, step)."""

    def step() -> int:
        x, y = next(batches)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = loss(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        out.backward()
        optimizer.step()
        return len(x)

    return step


# ---------------------------------------------------------------- CPU part


def cpu_datasets(args: argparse.Namespace, tmp: Path) -> Iterator[tuple[str, str, data.TaskData]]:
    """(name, where the data came from, TaskData on the CPU) for the four datasets."""
    yield "digits", "bundled (scikit-learn)", data.load("digits")
    yield "natural", "bundled (scikit-image)", data.load("natural")
    if args.cifar_root:
        yield "cifar100", f"real, {args.cifar_root}", data.load("cifar100", root=args.cifar_root)
    else:
        write_cifar100(tmp / "cifar", 50_000, 10_000, classes=100)
        root = tmp / "cifar"
        yield "cifar100", "generated files, same format and shapes", data.load("cifar100", root=root, verify=False)
    if args.div2k_root:
        yield "div2k", f"real, {args.div2k_root}", data.load("div2k", root=args.div2k_root, limit=args.div2k_limit)
    else:
        root = write_div2k(tmp / "div2k", args.generated_div2k_images, 1, size=(2040, 1356), smooth=True)
        yield ("div2k", "generated files, same format and shapes*",
               data.load("div2k", root=root, verify=False, patches_per_epoch=DIV2K_PATCHES))


def cpu_step_throughput(td: data.TaskData, model_name: str, batch_size: int, width: float, steps: int,
                        warmup: int) -> float:
    """Median examples/s of forward + backward + SGD step of ``model_name`` on one fixed batch of ``td``."""
    torch.manual_seed(0)
    model = models.build(model_name, in_channels=td.in_channels, num_classes=td.num_classes, width=width)
    model.train()
    optimizer = torch.optim.SGD(param_groups(model, 5e-4), lr=0.01, momentum=0.9)
    loss = nn.CrossEntropyLoss(label_smoothing=0.1) if td.task == "classification" else nn.MSELoss()
    x, y = next(td.train.batches(batch_size, torch.Generator().manual_seed(0)))
    step = training_step(model, optimizer, loss, iter(lambda: (x, y), None), torch.device("cpu"), amp=False)
    times = []
    for rep in range(warmup + steps):
        start = time.perf_counter()
        step()
        if rep >= warmup:
            times.append(time.perf_counter() - start)
    return len(x) / statistics.median(times)


def cpu_part(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)  # here only: the GPU part keeps torch's default (its noise is drawn on the CPU)
    print(f"\n== CPU part: data loader vs training step, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, width {args.width}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="wconv-throughput-") as tmp:
        for name, source, td in cpu_datasets(args, Path(tmp)):
            model = CPU_MODELS[name]
            sb = args.cpu_step_batch or CPU_STEP_BATCH[name]
            loader = loader_throughput(td.train, args.loader_batch, args.loader_examples, args.loader_repeats,
                                       torch.device("cpu"))
            torch.set_num_threads(1)
            loader_1 = loader_throughput(td.train, args.loader_batch, args.loader_examples, args.loader_repeats,
                                         torch.device("cpu"))
            torch.set_num_threads(args.threads)
            step = cpu_step_throughput(td, model, sb, args.width, args.cpu_steps, args.cpu_warmup)
            rows.append((name, source, len(td.train), model, loader, loader_1, sb, step))
            print(f"  {name}: loader {loader:,.0f} ex/s ({loader_1:,.0f} at 1 thread), {model} step {step:,.1f} ex/s",
                  flush=True)
    print(f"\nloader: median of {args.loader_repeats} passes of ≥ {args.loader_examples:,} examples, batch "
          f"{args.loader_batch} (also at 1 thread: on a loaded machine, OpenMP fork/join of small ops with a "
          f"descheduled 2nd thread dominates); step: median of {args.cpu_steps} steps after {args.cpu_warmup} "
          f"warm-up, fixed batch; loader/step uses the {args.threads}-thread loader")
    header = (f"| {'dataset':<8} | {'data':<40} | {'train ex':>8} | {'model':<13} | {'loader ex/s':>11} | "
              f"{'1 thread':>9} | "
              f"{'step batch':>10} | {'step ex/s':>9} | {'loader/step':>11} | ≥10× |")
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for name, source, n, model, loader, loader_1, sb, step in rows:
        ratio = loader / step
        print(f"| {name:<8} | {source:<40} | {n:>8,} | {model:<13} | {loader:>11,.0f} | {loader_1:>9,.0f} | "
              f"{sb:>10} | {step:>9,.1f} | {ratio:>11,.0f} | {'yes' if ratio >= 10 else 'NO':<4} |")
    if not args.cifar_root:
        print("generated cifar100: official python-2 pickles, 50,000 train + 10,000 test random 32×32 RGB images")
    if not args.div2k_root:
        print(f"* generated div2k: {args.generated_div2k_images} train + 1 valid 2040×1356 RGB PNGs (DIV2K: 800 + 100 "
              f"of about that size); epoch set to the real one, {DIV2K_PATCHES:,} random 64×64 patches")


# ---------------------------------------------------------------- eval part

EVAL_MODELS = {"tiny_denoiser": {}, "dncnn (width 0.25)": {"width": 0.25}}
EVAL_SETS = {"before: psnr ssim nrmse uiq": ("psnr", "ssim", "nrmse", "uiq"), "now: default": None}


def eval_share(model: str, options: dict, val_metrics, epochs: int) -> tuple[float, float]:
    """Median seconds per epoch of training and of validation, over ``epochs`` epochs after a warm-up one."""
    from wconv.train import Trial, TrialConfig

    tc = TrainingConfig.for_task("denoising", epochs=epochs + 1, val_metrics=val_metrics)
    config = TrialConfig(model=model, dataset="natural", kernel_size=3, alpha=(0.8,), training=tc,
                         model_options=options)
    with tempfile.TemporaryDirectory() as tmp:
        trial = Trial(config, Path(tmp))  # run_trial's own steps, timed one by one
        train, val = [], []
        for epoch in range(epochs + 1):
            start = time.perf_counter()
            trial.train_epoch()
            middle = time.perf_counter()
            trial.validate()
            if epoch:
                train.append(middle - start)
                val.append(time.perf_counter() - middle)
    return statistics.median(train), statistics.median(val)


def eval_part(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    td = data.load("natural")
    print(f"\n== Eval part: per-epoch validation share of a denoising trial on natural ({len(td.train)} training "
          f"patches, {len(td.val)} validation tiles of 32×32 per epoch), batch 128, {torch.get_num_threads()} "
          f"thread(s), median of {args.eval_epochs} epochs", flush=True)
    header = f"| {'model':<20} | {'validated metrics':<28} | {'train s':>7} | {'val s':>7} | {'val share':>9} |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for model, options in EVAL_MODELS.items():
        for label, names in EVAL_SETS.items():
            train, val = eval_share(model.split()[0], options, names, args.eval_epochs)
            print(f"| {model:<20} | {label:<28} | {train:>7.2f} | {val:>7.2f} | {val / (train + val):>9.0%} |",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "cpu", "eval"), default="all")
    parser.add_argument("--cifar-root", help="folder holding cifar-100-python (real data); "
                        "default: generated files")
    parser.add_argument("--div2k-root", help="folder holding DIV2K_train_HR and DIV2K_valid_HR (real data)")
    c = parser.add_argument_group("CPU part")
    c.add_argument("--threads", type=int, default=2, help="torch CPU threads of the CPU part")
    c.add_argument("--width", type=float, default=1.0, help="channel multiplier of the CPU models")
    c.add_argument("--cpu-steps", type=int, default=5, help="timed training steps per model (median)")
    c.add_argument("--cpu-warmup", type=int, default=2)
    c.add_argument("--cpu-step-batch", type=int, help="step batch for every dataset (default: per dataset, "
                   + ", ".join(f"{k} {v}" for k, v in CPU_STEP_BATCH.items()) + ")")
    c.add_argument("--loader-batch", type=int, default=128, help="the trainer's batch size")
    c.add_argument("--loader-examples", type=int, default=5_000, help="examples per timed loader pass")
    c.add_argument("--loader-repeats", type=int, default=3)
    c.add_argument("--generated-div2k-images", type=int, default=6, help="train PNGs written when no --div2k-root")
    c.add_argument("--div2k-limit", type=int, help="images read per split from --div2k-root (CPU memory)")
    parser.add_argument("--eval-epochs", type=int, default=3, help="timed epochs per row of the eval part")
    args = parser.parse_args()

    started = time.perf_counter()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)", flush=True)
    if args.part in ("all", "cpu"):
        cpu_part(args)
    if args.part in ("all", "eval"):
        eval_part(args)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"wall {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
