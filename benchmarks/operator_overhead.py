"""What the weighted convolution costs: training-step and fused-inference time relative to torch's conv.

Targets (Sect. 3.2's claim that Φ adds no measurable cost): training ≤ 1.01 × standard on a CPU (≤ 1.02 on a
GPU), fused inference ≤ 1.01 × standard. The weighted training step is ``run_trial``'s: Φ applied once per
step for the whole model (``wconv.conv.DensityStep``); "per conv" times the modules used alone (each conv
multiplies its own weight in its forward and backward). Standard and weighted models run in one process,
interleaved step by step (ABBA order), and each time is the median of ``--steps`` steps after ``--warmup``.
The "control" rows time two identical standard models the same way: their distance from 1.00 is the noise
floor of this machine. The ratio is the median of per-pair ratios; "Φ work alone" times only what the
density adds to a step (the once-per-step product and its backward), reported as 1 + Φ-time /
standard-step-time (robust to load, but it leaves out cache effects). The operator columns count the
outermost aten calls of one step (torch.profiler; a call made inside another aten call is not counted) of
each model and their difference: what the density dispatches per step, independent of load.

    python benchmarks/operator_overhead.py                 # CPU (and CUDA, eager and compiled, if present)
    python benchmarks/operator_overhead.py --steps 40 --device cpu
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from wconv import models
from wconv.conv import DensityStep, convert, fuse

ALPHA = {3: 0.8}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(step_a: Callable[[], None], step_b: Callable[[], None], device: torch.device,
                     steps: int, warmup: int, clock: Callable[[], float] = time.perf_counter
                     ) -> tuple[float, float, float]:
    """Median ms of ``step_a`` and ``step_b`` (alternating A,B / B,A) and the median of the paired ratios B/A.

    Each pair runs back to back, so the paired ratio cancels load that drifts slower than one step
    (other processes on a shared machine); it is the ratio the table reports. ``clock`` may be
    ``time.process_time``: CPU time ignores the time this process spends descheduled.
    """
    a, b = [], []
    for rep in range(warmup + steps):
        pair = {}
        for key in ("ab" if rep % 2 == 0 else "ba"):
            step = step_a if key == "a" else step_b
            _sync(device)
            start = clock()
            step()
            _sync(device)
            pair[key] = (clock() - start) * 1e3
        if rep >= warmup:
            a.append(pair["a"])
            b.append(pair["b"])
    return statistics.median(a), statistics.median(b), statistics.median(y / x for x, y in zip(a, b))


def density_work(model: nn.Module) -> Callable[[], None]:
    """Only what weighting adds to a training step: every conv's ``W ∘ Φ`` in one product and its backward."""
    density = DensityStep(model)
    grads = [torch.ones_like(m.weight) for m in density.convs.values()]

    def step() -> None:
        torch.autograd.backward(list(density.weights().values()), grads)

    return step


def training_step(model: nn.Module, x: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor],
                  once: bool = True) -> Callable[[], None]:
    """One forward + backward + SGD step (momentum, weight decay) of ``model`` on a fixed batch, its density
    applied once for the whole model as ``run_trial`` does (``once``), else by each conv."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    density = DensityStep(model, once=once)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with density.applied():
            out = density.forward(density.weights(), x)
        loss(out).backward()
        optimizer.step()

    return step


def operators(step: Callable[[], None]) -> int:
    """Outermost aten calls of one ``step`` (a multi-tensor op counts once, whatever it runs inside)."""
    from torch.profiler import ProfilerActivity, profile

    step()  # first-call work (allocations, caches) left out
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()

    def inside_aten(event) -> bool:
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        return parent is not None

    return sum(1 for e in prof.events() if e.name.startswith("aten::") and not inside_aten(e))


def inference_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode():
            model(x)

    return step


def workloads(args: argparse.Namespace, device: torch.device):
    """(name, model factory, input, loss) for ResNet-56 on CIFAR-sized images and DnCNN on RGB patches."""
    g = torch.Generator().manual_seed(0)
    x_cls = torch.randn(args.resnet_batch, 3, 32, 32, generator=g).to(device)
    y_cls = torch.randint(0, 10, (args.resnet_batch,), generator=g).to(device)
    clean = torch.rand(args.dncnn_batch, 3, args.dncnn_size, args.dncnn_size, generator=g).to(device)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=g).to(device)
    yield "ResNet-56", lambda: models.build("resnet56", num_classes=10), x_cls, lambda out: F.cross_entropy(out, y_cls)
    yield "DnCNN-17", lambda: models.build("dncnn"), noisy, lambda out: F.mse_loss(out, clean)


def benchmark(args: argparse.Namespace, device: torch.device, compiled: bool) -> list[tuple]:
    rows = []
    # CPU time is only meaningful for CPU work; CUDA kernels run elsewhere, so they keep wall time.
    clock = time.process_time if args.clock == "cpu" and device.type == "cpu" else time.perf_counter
    wrap = (lambda m: torch.compile(m)) if compiled else (lambda m: m)
    train_target = 1.02 if device.type == "cuda" else 1.01
    suffix = " +compile" if compiled else ""
    for name, make, x, loss in workloads(args, device):
        torch.manual_seed(0)
        standard = make().to(device)
        weighted = convert(copy.deepcopy(standard), ALPHA)
        control = copy.deepcopy(standard)

        def measure(mode: str, a: Callable[[], None], b: Callable[[], None], target: float) -> float:
            ops = (operators(a), operators(b))
            ms_a, ms_b, ratio = time_interleaved(a, b, device, args.steps, args.warmup, clock)
            rows.append((name, mode + suffix, device.type, ms_a, ms_b, ratio, target, ops))
            print(f"  {name:<10} {mode + suffix:<28} {ms_a:9.2f} {ms_b:9.2f} {ratio:7.3f}  ops {ops[0]} {ops[1]}",
                  flush=True)
            return ms_a

        for m in (standard, weighted, control):
            m.train()
        train_standard = training_step(wrap(standard), x, loss)
        if compiled:  # the compiled module is run as a whole: each conv multiplies inside the compiled graph
            ms_std = measure("train weighted", train_standard, training_step(wrap(weighted), x, loss, once=False),
                             train_target)
        else:
            ms_std = measure("train weighted", train_standard, training_step(weighted, x, loss), train_target)
            if args.per_conv:
                measure("train weighted, per conv", train_standard, training_step(weighted, x, loss, once=False),
                        float("nan"))
        if not args.no_control:
            measure("train control (std/std)", train_standard, training_step(wrap(control), x, loss), 1.00)
        if not compiled:
            # The weighting alone, timed apart from the step: a low-noise estimate of its share.
            ms_phi, _, _ = time_interleaved(density_work(weighted), lambda: None, device, args.steps, args.warmup,
                                            clock)
            weighted.zero_grad(set_to_none=True)
            rows.append((name, "train: std + Φ work alone (est.)", device.type, ms_std, ms_std + ms_phi,
                         1 + ms_phi / ms_std, train_target, None))
            print(f"  {name:<10} {'Φ work alone':<28} {ms_std:9.2f} {ms_phi:9.2f}", flush=True)

        for m in (standard, weighted, control):
            m.eval()
        fused = fuse(copy.deepcopy(weighted))
        infer_standard = inference_step(wrap(standard), x)
        measure("infer fused", infer_standard, inference_step(wrap(fused), x), 1.01)
        if args.unfused:
            measure("infer weighted (unfused)", infer_standard, inference_step(wrap(weighted), x), float("nan"))
        if not args.no_control:
            measure("infer control (std/std)", infer_standard, inference_step(wrap(control), x), 1.00)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model (median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    parser.add_argument("--resnet-batch", type=int, default=32)
    parser.add_argument("--dncnn-batch", type=int, default=8)
    parser.add_argument("--dncnn-size", type=int, default=40, help="DnCNN patch side (RGB)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time (use with --threads 1 on a machine shared with other jobs)")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on CPU (always on CUDA)")
    parser.add_argument("--unfused", action="store_true", help="also time inference of the unfused weighted model")
    parser.add_argument("--per-conv", action="store_true",
                        help="also time training with each conv applying its own Φ (the modules alone)")
    parser.add_argument("--no-control", action="store_true", help="skip the standard-vs-standard noise rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True

    runs = []
    if args.device in ("all", "cpu"):
        runs.append((torch.device("cpu"), False))
        if args.compile:
            runs.append((torch.device("cpu"), True))
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        runs += [(torch.device("cuda"), False), (torch.device("cuda"), True)]

    rows = []
    for device, compiled in runs:
        print(f"[{device.type}{' compiled' if compiled else ''}] model, mode, standard ms, weighted ms, ratio",
              flush=True)
        rows += benchmark(args, device, compiled)

    print(f"\ntorch {torch.__version__}, {args.threads} CPU threads, {args.clock} clock, median of {args.steps} steps "
          f"after {args.warmup} warm-up, interleaved; ResNet-56 batch {args.resnet_batch} @32×32, "
          f"DnCNN-17 batch {args.dncnn_batch} @{args.dncnn_size}×{args.dncnn_size} RGB, α = {ALPHA}")
    header = (f"| {'model':<10} | {'mode':<33} | {'device':<6} | {'standard ms':>11} | {'weighted ms':>11} | "
              f"{'ratio':>6} | {'target':>6} | {'ops std':>7} | {'ops wtd':>7} | {'Δ ops':>6} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, mode, dev, ms_a, ms_b, ratio, target, ops in rows:
        shown = "—" if target != target else f"≤{target:.2f}" if target > 1 else "≈1.00"
        counts = (f"{ops[0]:7d} | {ops[1]:7d} | {ops[1] - ops[0]:+6d}" if ops else f"{'—':>7} | {'—':>7} | {'—':>6}")
        print(f"| {name:<10} | {mode:<33} | {dev:<6} | {ms_a:11.2f} | {ms_b:11.2f} | {ratio:6.3f} | {shown:>6} | "
              f"{counts} |")


if __name__ == "__main__":
    main()
