"""Training throughput against the paper's Table 4 / Table 6, and whether the data path keeps up.

GPU part (only when CUDA is present): the CIFAR-100 training step of every classification model, standard vs
weighted (α = 0.8), channels_last + bf16 autocast, SGD, batch 128, as ``wconv.train.run_trial`` does it. The
batch comes from ``train.batches`` each step (scaling, flips on the device), over the real training split
(``--cifar-root``) or over 50,000 synthetic uint8 32×32 RGB images already on the GPU (45,000 in the train
split, as the real one). Standard and weighted steps alternate (ABBA) in one process; each figure is the
median of ``--steps`` steps after ``--warmup``, the ratio the median of per-pair ratios. Epoch time is
extrapolated to 45,000 images (the paper's epoch may also hold validation; ours does not).
Targets: epochs ≥ 20× faster than Table 4 (A100), weighted/standard ≤ 1.02. The denoisers (Table 6) run the
same way at 3×3 (α = 0.8) and 5×5 (α = (0.5, 0.9)) on 64×64 RGB patches, Adam, batch 128, epoch =
11,520 patches (16 per DIV2K training image); the paper does not say what its DIV2K epoch holds, so the
speed-up against Table 6 is indicative only. "loader ex/s" times ``train.batches`` alone on the GPU;
"loader/step" divides it by the standard step's ex/s (which includes drawing its batch).

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

    python benchmarks/throughput.py                      # both parts (GPU part skipped without CUDA)
    python benchmarks/throughput.py --part eval --threads 1
    python benchmarks/throughput.py --part gpu --compile --cifar-root /scratch/data
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

import numpy as np
import torch
import torch.nn as nn

from wconv import data, models

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from official_formats import write_cifar100, write_div2k  # noqa: E402  (shared with the tests)
from wconv.conv import param_groups
from wconv.data.split import LabelledImages, NoisyPatches
from wconv.train import TrainingConfig

PAPER_TABLE_4 = {"resnet56": (202, 215), "vgg16": (378, 414), "nin": (109, 115), "gmlp": (54, 56),
                 "gac_snn": (118, 130), "efficientnet_b0": None}
"""Seconds per CIFAR-100 training epoch on an A100, (standard, weighted); EfficientNet is not in the table."""
PAPER_TABLE_6 = {(3, "dncnn"): (2.43, 2.50), (3, "nafnet"): (2.08, 2.10), (3, "cgnet"): (3.04, 3.07),
                 (5, "dncnn"): (9.48, 9.76), (5, "nafnet"): (8.92, 9.11), (5, "cgnet"): (11.02, 11.13)}
"""Seconds per DIV2K training epoch, (standard, weighted), by (kernel size, model)."""
ALPHA = {3: 0.8, 5: (0.5, 0.9)}
CIFAR_TRAIN = 45_000
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
    """One step of ``run_trial``'s loop (next batch, autocast forward, loss in float32, backward, step)."""

    def step() -> int:
        x, y = next(batches)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = loss(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        out.backward()
        optimizer.step()
        return len(x)

    return step


def time_interleaved(a: Callable[[], int], b: Callable[[], int], device: torch.device, steps: int,
                     warmup: int) -> tuple[float, float, float]:
    """Median examples/s of ``a`` and ``b`` run alternately (AB, BA, ...), and the median of paired time ratios b/a."""
    times: dict[str, list[float]] = {"a": [], "b": []}
    sizes = {}
    for rep in range(warmup + steps):
        for key in ("ab" if rep % 2 == 0 else "ba"):
            _sync(device)
            start = time.perf_counter()
            sizes[key] = (a if key == "a" else b)()
            _sync(device)
            if rep >= warmup:
                times[key].append(time.perf_counter() - start)
    ratio = statistics.median(tb / ta for ta, tb in zip(times["a"], times["b"]))
    return sizes["a"] / statistics.median(times["a"]), sizes["b"] / statistics.median(times["b"]), ratio


# ---------------------------------------------------------------- generated official-format files


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
    from wconv.train import TrialConfig, _Trial

    tc = TrainingConfig.for_task("denoising", epochs=epochs + 1, val_metrics=val_metrics)
    config = TrialConfig(model=model, dataset="natural", kernel_size=3, alpha=(0.8,), training=tc,
                         model_options=options)
    with tempfile.TemporaryDirectory() as tmp:
        trial = _Trial(config, Path(tmp))  # run_trial's own steps, timed one by one
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


# ---------------------------------------------------------------- GPU part


def synthetic_cifar(device: torch.device) -> LabelledImages:
    """50,000 random uint8 32×32 RGB images on ``device``; the first 45,000 are the train split."""
    g = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (50_000, 3, 32, 32), generator=g, device=device, dtype=torch.uint8)
    labels = torch.arange(50_000, device=device) % 100
    from wconv.data.cifar import MEAN, STD

    return LabelledImages(images[:CIFAR_TRAIN], labels[:CIFAR_TRAIN], scale=1 / 255, mean=MEAN, std=STD,
                          train=True, hflip=True)


def synthetic_div2k(device: torch.device, n_images: int) -> NoisyPatches:
    """``n_images`` random uint8 1356×2040 RGB images on ``device``, 11,520 random 64×64 patches per epoch."""
    g = torch.Generator(device=device).manual_seed(0)
    images = [torch.randint(0, 256, (3, 1356, 2040), generator=g, device=device, dtype=torch.uint8)
              for _ in range(n_images)]
    return NoisyPatches(images, patch_size=64, patches_per_epoch=DIV2K_PATCHES, sigma=0.01, hflip=True, seed=100)


def to_channels_last(model: nn.Module) -> nn.Module:
    """channels_last for every 4-D parameter and buffer. ``model.to(memory_format=torch.channels_last)``, as
    ``wconv.train.prepare_trial`` calls it, raises on 5-D tensors (gac_snn's Conv3d weights)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.dim() == 4:
            t.data = t.data.contiguous(memory_format=torch.channels_last)
    return model


def _gpu_twin(name: str, kernel_size: int, alpha, task: str, split, args,
              device) -> tuple[Callable[[], int], nn.Module]:
    """A training step of ``name`` (standard if alpha is None) as ``run_trial`` builds it, over its own data stream."""
    torch.manual_seed(0)
    model = to_channels_last(models.build(name, kernel_size=kernel_size, alpha=alpha).to(device))
    tc = TrainingConfig.for_task(task)
    groups = param_groups(model, tc.weight_decay)
    if tc.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum)
    else:
        optimizer = torch.optim.Adam(groups, lr=tc.lr, betas=tuple(tc.betas))
    loss = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing) if task == "classification" else nn.MSELoss()
    model.train()
    run = torch.compile(model) if args.compile else model
    return training_step(run, optimizer, loss, _endless(split, args.batch, 0), device, amp=True), model


def gpu_rows(names, kernel_size: int, task: str, split, epoch: int, paper: Callable, args, device) -> list[tuple]:
    rows = []
    loader = loader_throughput(split, args.batch, 20 * args.batch, 3, device)
    for name in names:
        standard, m1 = _gpu_twin(name, kernel_size, None, task, split, args, device)
        weighted, m2 = _gpu_twin(name, kernel_size, ALPHA[kernel_size], task, split, args, device)
        std, wtd, ratio = time_interleaved(standard, weighted, device, args.steps, args.warmup)
        rows.append((f"{name} {kernel_size}×{kernel_size}", std, wtd, ratio, loader, epoch, paper(name)))
        print(f"  {name} {kernel_size}×{kernel_size}: {std:,.0f} / {wtd:,.0f} ex/s, weighted/standard {ratio:.3f}",
              flush=True)
        del standard, weighted, m1, m2
        torch.cuda.empty_cache()
    return rows


def print_gpu_table(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}")
    header = (f"| {'model':<20} | {'std ex/s':>9} | {'wtd ex/s':>9} | {'epoch s std/wtd':>17} | {'paper s':>13} | "
              f"{'speed-up std/wtd':>16} | {'wtd/std':>7} | {'paper':>5} | {'loader ex/s':>11} | {'loader/step':>11} |")
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for name, std, wtd, ratio, loader, epoch, paper in rows:
        ep_s, ep_w = epoch / std, epoch / wtd
        if paper:
            paper_s, paper_ratio = f"{paper[0]:g}/{paper[1]:g}", f"{paper[1] / paper[0]:.3f}"
            speedup = f"{paper[0] / ep_s:.1f}×/{paper[1] / ep_w:.1f}×"
        else:
            paper_s, speedup, paper_ratio = "—", "—", "—"
        print(f"| {name:<20} | {std:>9,.0f} | {wtd:>9,.0f} | {f'{ep_s:.2f}/{ep_w:.2f}':>17} | {paper_s:>13} | "
              f"{speedup:>16} | {ratio:>7.3f} | {paper_ratio:>5} | {loader:>11,.0f} | {loader / std:>11.1f} |")


def gpu_part(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        why = ("torch was built without CUDA" if torch.version.cuda is None
               else "no CUDA device is visible (driver/CUDA_VISIBLE_DEVICES)")
        print(f"\n== GPU part skipped: torch.cuda.is_available() is False ({why}; torch {torch.__version__})")
        return
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"\n== GPU part: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, channels_last + bf16 "
          f"autocast{', torch.compile' if args.compile else ''}, batch {args.batch}, median of {args.steps} steps "
          f"after {args.warmup} warm-up, standard/weighted interleaved", flush=True)
    if args.cifar_root:
        source = f"real CIFAR-100 from {args.cifar_root}"
        split = data.load("cifar100", root=args.cifar_root, device=device).train
    else:
        source = "SYNTHETIC: 50,000 random 32×32 RGB uint8 images on the GPU (45,000 train), not the real dataset"
        split = synthetic_cifar(device)
    print(f"  CIFAR-100 data: {source}")
    rows = gpu_rows(args.models, 3, "classification", split, CIFAR_TRAIN, PAPER_TABLE_4.get, args, device)
    del split
    print_gpu_table(f"CIFAR-100 (Table 4, A100; α = {ALPHA[3]}), epoch = {CIFAR_TRAIN:,} images; {source}", rows)
    check_targets(rows, need_paper=True)
    if not args.denoisers:
        return
    if args.div2k_root:
        source = f"real DIV2K from {args.div2k_root} (epoch {DIV2K_PATCHES:,} patches)"
        split = data.load("div2k", root=args.div2k_root, device=device, patches_per_epoch=DIV2K_PATCHES).train
    else:
        source = (f"SYNTHETIC: {args.synthetic_div2k_images} random 1356×2040 RGB uint8 images on the GPU, "
                  f"{DIV2K_PATCHES:,} random 64×64 patches per epoch")
        split = synthetic_div2k(device, args.synthetic_div2k_images)
    print(f"  DIV2K data: {source}")
    rows = []
    for k in (3, 5):
        rows += gpu_rows(args.denoisers, k, "denoising", split, DIV2K_PATCHES,
                         lambda name, k=k: PAPER_TABLE_6.get((k, name)), args, device)
    print_gpu_table(f"DIV2K denoising (Table 6; α = {ALPHA[3]} at 3×3, {ALPHA[5]} at 5×5), epoch = "
                    f"{DIV2K_PATCHES:,} 64×64 patches (the paper's epoch is not stated: speed-ups indicative); "
                    f"{source}", rows)
    check_targets(rows, need_paper=False)


def check_targets(rows: list[tuple], need_paper: bool) -> None:
    speedups = [p * rate / epoch for _, std, wtd, _, _, epoch, paper in rows if paper
                for p, rate in zip(paper, (std, wtd))]
    ratios = [r[3] for r in rows]
    if speedups:
        print(f"targets: speed-up ≥ 20× for every model: {'met' if min(speedups) >= 20 else 'NOT met'} "
              f"(lowest {min(speedups):.1f}×{'' if need_paper else ', indicative'}); "
              f"weighted/standard ≤ 1.02: {'met' if max(ratios) <= 1.02 else 'NOT met'} (highest {max(ratios):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "cpu", "gpu", "eval"), default="all")
    parser.add_argument("--cifar-root", help="folder holding cifar-100-python (real data); "
                        "default: generated files (CPU) / synthetic tensors (GPU)")
    parser.add_argument("--div2k-root", help="folder holding DIV2K_train_HR and DIV2K_valid_HR (real data)")
    g = parser.add_argument_group("GPU part")
    g.add_argument("--steps", type=int, default=20, help="timed steps per model and variant (median)")
    g.add_argument("--warmup", type=int, default=5, help="untimed steps first (cudnn autotuning, compilation)")
    g.add_argument("--batch", type=int, default=128)
    g.add_argument("--compile", action="store_true", help="torch.compile the models")
    g.add_argument("--models", nargs="+", default=list(PAPER_TABLE_4))
    g.add_argument("--denoisers", nargs="*", default=["dncnn", "nafnet", "cgnet"], help="none: skip Table 6")
    g.add_argument("--synthetic-div2k-images", type=int, default=720)
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
    if args.part in ("all", "gpu"):
        gpu_part(args)
    if args.part in ("all", "cpu"):
        cpu_part(args)
    if args.part in ("all", "eval"):
        eval_part(args)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"wall {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
