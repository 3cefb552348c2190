"""The paper's Tables 4 and 6 on today's GPU, and how many ResNet-56 trials one GPU trains per hour.

One command, on data generated on the device (no download): CIFAR-100-shaped uint8 32×32 RGB images (45,000
in the training split, as ours after the 10 % validation hold-out) and DIV2K-shaped 2040×1356 RGB images cut
into random 64×64 patches (an epoch = 11,520 patches: 16 per training image of our 720; the paper does not
say what its DIV2K epoch holds, so Table 6 comparisons are indicative). The step is ``run_trial``'s own
(``wconv.train``: batch drawn and augmented on the device, channels_last and bf16 autocast on CUDA, the
paper's optimiser, loss summed on the device) and the fused step is ``wconv.fused``'s.

Measured, within ``--budget-s`` (tasks are ordered by importance; one that would not fit is skipped and
listed; compiled rows run in a subprocess killed at the deadline):
1. per paper model (resnet56, vgg16, nin, gmlp, gac_snn; dncnn, nafnet, cgnet at 3×3 and 5×5): examples/s
   of the training step, standard vs weighted (α = 0.8 at 3×3, (0.5, 0.9) at 5×5), alternated over
   ``rounds``; epoch seconds EXTRAPOLATED from the step rate to 45,000 images (classification) or 11,520
   patches (denoising), training only (no validation); the weighted/standard ratio (median of per-round
   ratios) beside the paper's; GPU busy fraction = union of the CUDA kernels' intervals (torch.profiler)
   per step over the wall time per step measured without the profiler;
2. the same with ``torch.compile`` (inductor on CUDA; on CPU aot_eager, which exercises the compiled path
   without inductor's minutes of C++ compilation), for the first models the budget allows (ResNet-56 first);
3. ResNet-56 (weighted) trials per GPU-hour: (a) one trial on the device, (b) 2 and 4 trials packed on it as
   separate processes started together (what Ray's fractional GPUs, e.g. ``gpus_per_trial: 0.5``, do: Ray
   only co-locates processes), (c) fused groups of K = 2, 4, 8, 16 members (``wconv.fused``). Trial-epochs per
   GPU-hour = 3600 × examples/s ÷ 45,000; 200-epoch trials per GPU-hour divide that by 200.

    python benchmarks/gpu.py --out results/gpu                 # GPU if there is one, else small CPU sizes
    python benchmarks/gpu.py --device cpu --small --budget-s 600 --out /tmp/gpu-cpu
    python benchmarks/gpu.py --device cuda --budget-s 390 --out $OUT/gpu

Writes ``<out>.md`` (the tables printed) and ``<out>.json`` (every number, the skipped tasks, the settings).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time

STARTED = time.perf_counter()
"""The budget counts from here, before torch's import."""

from dataclasses import asdict, dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Optional  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without installing it (e.g. on a lent GPU machine)

import torch  # noqa: E402

from wconv.data.split import LabelledImages, NoisyPatches  # noqa: E402
from wconv.data.task import TaskData  # noqa: E402
from wconv.fused import Group  # noqa: E402
from wconv.train import TrainingConfig, TrialConfig, Trial  # noqa: E402

PAPER_TABLE_4 = {"resnet56": (202, 215), "vgg16": (378, 414), "nin": (109, 115), "gmlp": (54, 56),
                 "gac_snn": (118, 130)}
"""Seconds per CIFAR-100 training epoch on an A100 (Leonardo), (standard, weighted)."""
PAPER_TABLE_6 = {(3, "dncnn"): (2.43, 2.50), (3, "nafnet"): (2.08, 2.10), (3, "cgnet"): (3.04, 3.07),
                 (5, "dncnn"): (9.48, 9.76), (5, "nafnet"): (8.92, 9.11), (5, "cgnet"): (11.02, 11.13)}
"""Seconds per DIV2K training epoch, (standard, weighted), by (kernel size, model)."""
CLASSIFIERS = ("resnet56", "vgg16", "nin", "gmlp", "gac_snn")
DENOISERS = ("dncnn", "nafnet", "cgnet")
ALPHA = {3: (0.8,), 5: (0.5, 0.9)}
CIFAR_TRAIN = 45_000
DIV2K_PATCHES = 11_520
TRIAL_EPOCHS = 200
"""The paper's classification budget: what a "trial" is in trials per GPU-hour."""
CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the paper's sizes on a GPU, small ones on a CPU."""

    batch_classification: int
    batch_denoising: int
    width: float
    cifar_images: int
    div2k_images: int
    div2k_shape: tuple[int, int]
    steps: int
    warmup: int
    rounds: int
    profile_steps: int
    fused: tuple[int, ...]
    packed: tuple[int, ...]
    pack_seconds: float


GPU_SIZES = Sizes(batch_classification=128, batch_denoising=128, width=1.0, cifar_images=CIFAR_TRAIN,
                  div2k_images=16, div2k_shape=(1356, 2040), steps=15, warmup=3, rounds=2, profile_steps=3,
                  fused=(2, 4, 8, 16), packed=(2, 4), pack_seconds=8.0)
SMALL_SIZES = Sizes(batch_classification=32, batch_denoising=8, width=0.25, cifar_images=2_000, div2k_images=2,
                    div2k_shape=(256, 256), steps=3, warmup=1, rounds=3, profile_steps=0, fused=(2, 4, 8, 16),
                    packed=(2, 4), pack_seconds=4.0)


# ---------------------------------------------------------------- data and steps


def cifar_like(device: torch.device, n: int) -> TaskData:
    """``n`` random uint8 32×32 RGB images with 100 labels, generated on ``device``; the trainer's split class
    (per-batch scaling, normalisation and flips on the device)."""
    g = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, device=device, dtype=torch.uint8)
    labels = torch.arange(n, device=device) % 100
    split = LabelledImages(images, labels, scale=1 / 255, mean=CIFAR_MEAN, std=CIFAR_STD, train=True, hflip=True)
    return TaskData("cifar100-shaped", "classification", 3, 100, 32, split, split, split)


def div2k_like(device: torch.device, count: int, shape: tuple[int, int]) -> TaskData:
    """``count`` random uint8 RGB images of ``shape`` on ``device``; 11,520 random 64×64 noisy patches per epoch."""
    g = torch.Generator(device=device).manual_seed(0)
    images = [torch.randint(0, 256, (3, *shape), generator=g, device=device, dtype=torch.uint8) for _ in range(count)]
    split = NoisyPatches(images, patch_size=64, patches_per_epoch=DIV2K_PATCHES, sigma=0.01, hflip=True, seed=100)
    return TaskData("div2k-shaped", "denoising", 3, None, 64, split, split, split)


def _config(model: str, kernel_size: int, alpha, sizes: Sizes, compiled: bool, backend: str) -> TrialConfig:
    task = "classification" if model in CLASSIFIERS else "denoising"
    batch = sizes.batch_classification if task == "classification" else sizes.batch_denoising
    tc = TrainingConfig.for_task(task, batch_size=batch, max_steps_per_epoch=sizes.steps, compile=compiled,
                                 compile_backend=backend)
    return TrialConfig(model=model, dataset="cifar100" if task == "classification" else "div2k",
                       kernel_size=kernel_size, alpha=alpha, training=tc,
                       model_options={} if sizes.width == 1 else {"width": sizes.width})


def _steps(unit, n: int) -> None:
    """``n`` training steps of a ``Trial`` or ``Group`` (its ``train_epoch`` capped at ``n`` steps; ends in a
    host sync)."""
    unit.training = replace(unit.training, max_steps_per_epoch=n)
    unit.train_epoch()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(unit, n: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    _steps(unit, n)
    _sync(device)
    return time.perf_counter() - start


def busy_fraction(unit, n: int, step_s: float, device: torch.device) -> Optional[float]:
    """CUDA kernel time per step (union of kernel intervals, torch.profiler) over ``step_s``, the wall time
    per step measured without the profiler; None on a CPU."""
    if device.type != "cuda" or n < 1:
        return None
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            _steps(unit, n)
            _sync(device)
        spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                       if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start)
    except Exception as e:  # the profiler is an extra: its failure must not lose the timings
        print(f"  (GPU busy fraction not measured: {type(e).__name__}: {e})", flush=True)
        return None
    busy, end = 0.0, float("-inf")
    for a, b in spans:
        if b > end:
            busy += b - max(a, end)
            end = b
    return min(1.0, busy / 1e6 / n / step_s) if spans else None


def measure_pair(model: str, kernel_size: int, data: TaskData, sizes: Sizes, device: torch.device,
                 compiled: bool, backend: str) -> dict:
    """Standard vs weighted step of ``model``: examples/s of each (median over rounds), their ratio (median of
    per-round ratios), warm-up (compile) seconds and GPU busy fractions."""
    batch = sizes.batch_classification if model in CLASSIFIERS else sizes.batch_denoising
    with tempfile.TemporaryDirectory() as tmp:
        units, warm = {}, {}
        for variant, alpha in (("standard", None), ("weighted", ALPHA[kernel_size])):
            units[variant] = Trial(_config(model, kernel_size, alpha, sizes, compiled, backend), Path(tmp), data=data)
            warm[variant] = _timed(units[variant], sizes.warmup, device)
        times = {"standard": [], "weighted": []}
        for r in range(sizes.rounds):
            for variant in (("standard", "weighted") if r % 2 == 0 else ("weighted", "standard")):
                times[variant].append(_timed(units[variant], sizes.steps, device) / sizes.steps)
        ratio = statistics.median(w / s for s, w in zip(times["standard"], times["weighted"]))
        step = {v: statistics.median(t) for v, t in times.items()}
        busy = {v: busy_fraction(units[v], sizes.profile_steps, step[v], device) for v in units}
        del units
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"model": model, "kernel_size": kernel_size, "compiled": compiled, "batch": batch,
            "standard_ex_s": batch / step["standard"], "weighted_ex_s": batch / step["weighted"],
            "weighted_over_standard": ratio, "warmup_s": warm, "busy": busy}


def measure_fused(k: int, data: TaskData, sizes: Sizes, device: torch.device) -> dict:
    """A fused group of ``k`` weighted ResNet-56 members (α spread over the paper's range (0.5, 1.5))."""
    alphas = [(0.5 + (i + 0.5) / k,) for i in range(k)]
    members = [_config("resnet56", 3, a, sizes, False, "inductor") for a in alphas]
    with tempfile.TemporaryDirectory() as tmp:
        group = Group(members, Path(tmp), [Path(tmp) / str(i) for i in range(k)], data=data)
        warm = _timed(group, sizes.warmup, device)
        step = statistics.median(_timed(group, sizes.steps, device) / sizes.steps for _ in range(sizes.rounds))
        busy = busy_fraction(group, sizes.profile_steps, step, device)
        del group
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"trials": k, "ex_s": k * sizes.batch_classification / step, "warmup_s": warm, "busy": busy}


def _packed_worker(spec: dict, barrier, results) -> None:
    """One of several trials sharing the device: warm up, wait for the others, train for ``seconds``."""
    device = torch.device(spec["device"])
    if device.type == "cpu":
        torch.set_num_threads(1)
    sizes = Sizes(**{**spec["sizes"], "div2k_shape": tuple(spec["sizes"]["div2k_shape"]),
                     "fused": tuple(spec["sizes"]["fused"]), "packed": tuple(spec["sizes"]["packed"])})
    data = cifar_like(device, sizes.cifar_images)
    with tempfile.TemporaryDirectory() as tmp:
        trial = Trial(_config("resnet56", 3, ALPHA[3], sizes, False, "inductor"), Path(tmp), data=data)
        _timed(trial, sizes.warmup, device)
        barrier.wait(timeout=spec["timeout"])
        start, steps = time.perf_counter(), 0
        while time.perf_counter() - start < sizes.pack_seconds:
            _steps(trial, sizes.steps)
            steps += sizes.steps
        results.put(steps * sizes.batch_classification / (time.perf_counter() - start))


def measure_packed(n: int, sizes: Sizes, device: torch.device, timeout: float) -> dict:
    """``n`` weighted ResNet-56 trials as ``n`` processes on one device, timed together."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    spec = {"device": str(device), "sizes": asdict(sizes), "timeout": timeout}
    procs = [ctx.Process(target=_packed_worker, args=(spec, barrier, results), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    rates, deadline = [], time.perf_counter() + timeout
    try:
        while len(rates) < n:
            try:
                rates.append(results.get(timeout=1.0))
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError(f"a packed trial process exited with {[p.exitcode for p in procs]}") from None
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"packed trials gave {len(rates)} of {n} results in {timeout:.0f} s") from None
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return {"trials": n, "ex_s": sum(rates), "per_trial_ex_s": rates}


# ---------------------------------------------------------------- the plan, under a budget


class Budget:
    """Seconds left until the deadline; a task runs only if its estimate fits."""

    def __init__(self, seconds: float, started: float):
        self.deadline = started + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def _compiled_pair_in_subprocess(model: str, kernel_size: int, args, timeout: float) -> dict:
    """A compiled pair measured in a child process, killed at ``timeout`` (compilation time is hard to
    predict; the budget must hold)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--compiled-pair",
           f"{model}:{kernel_size}", "--compile-backend", args.compile_backend] + (["--small"] if args.small else []) + (
               ["--threads", str(args.threads)] if args.threads else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    device = torch.device(args.device)
    sizes = SMALL_SIZES if args.small else GPU_SIZES
    budget = Budget(args.budget_s, STARTED)
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, "
           f"{torch.get_num_threads()} threads)", "torch": torch.__version__, "small": args.small,
           "unit": "GPU" if device.type == "cuda" else "CPU",
           "budget_s": args.budget_s, "compile_backend": args.compile_backend, "sizes": asdict(sizes),
           "pairs": [], "fused": [], "packed": [], "skipped": []}
    spent: dict[str, float] = {}
    # First estimates (seconds); later ones are the longest actual of the kind. A compiled pair runs in a child
    # process killed at the deadline, so its estimate may be optimistic.
    guess = {"pair": 20.0 if device.type == "cuda" else 60.0, "fused": 10.0, "packed": 40.0,
             "compiled": 100.0 if device.type == "cuda" else 150.0}

    def attempt(kind: str, name: str, fn: Callable[[], None], scale: float = 1.0, reserve: float = 0.0) -> None:
        estimate = spent.get(kind, guess[kind]) * scale
        if budget.left() - reserve < estimate:
            out["skipped"].append(f"{name}: needs ~{estimate:.0f} s, {budget.left():.0f} s left")
            print(f"  skipped {name} (budget)", flush=True)
            return
        start = time.perf_counter()
        try:
            fn()
        except subprocess.TimeoutExpired:
            out["skipped"].append(f"{name}: killed at its time limit (budget)")
            print(f"  {name}: killed at its time limit (budget)", flush=True)
        except Exception as e:  # one failing model must not lose the others' numbers
            out["skipped"].append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            print(f"  FAILED {name}: {type(e).__name__}: {e}", flush=True)
        spent[kind] = max(spent.get(kind, 0.0), (time.perf_counter() - start) / scale)

    cifar = cifar_like(device, sizes.cifar_images)
    div2k = div2k_like(device, sizes.div2k_images, sizes.div2k_shape)

    def pair(model, k, data):
        row = measure_pair(model, k, data, sizes, device, False, args.compile_backend)
        out["pairs"].append(row)
        print(f"  {model} {k}×{k}: {row['standard_ex_s']:,.0f} / {row['weighted_ex_s']:,.0f} ex/s, "
              f"weighted/standard {row['weighted_over_standard']:.3f}", flush=True)

    def fused(k):
        row = measure_fused(k, cifar, sizes, device)
        out["fused"].append(row)
        print(f"  fused K={k}: {row['ex_s']:,.0f} ex/s", flush=True)

    def packed(n):
        row = measure_packed(n, sizes, device, timeout=max(30.0, min(budget.left(), 4 * spent.get("packed", 40.0))))
        out["packed"].append(row)
        print(f"  packed {n} processes: {row['ex_s']:,.0f} ex/s", flush=True)

    def compiled(model, k, reserve=0.0):
        row = _compiled_pair_in_subprocess(model, k, args, timeout=max(1.0, budget.left() - reserve - 5))
        out["pairs"].append(row)
        print(f"  {model} {k}×{k} compiled: {row['standard_ex_s']:,.0f} / {row['weighted_ex_s']:,.0f} ex/s "
              f"(warm-up incl. compile {row['warmup_s']['standard']:.0f} + {row['warmup_s']['weighted']:.0f} s)",
              flush=True)

    print(f"== {out['device']}, torch {torch.__version__}, {'small sizes' if args.small else 'paper sizes'}, "
          f"budget {args.budget_s:.0f} s", flush=True)
    attempt("pair", "resnet56 3×3", lambda: pair("resnet56", 3, cifar))
    for k in sizes.fused:
        attempt("fused", f"fused K={k}", lambda k=k: fused(k), scale=k / 2)
    for n in sizes.packed:
        attempt("packed", f"packed {n}", lambda n=n: packed(n))
    for model in CLASSIFIERS[1:]:
        attempt("pair", f"{model} 3×3", lambda m=model: pair(m, 3, cifar))
    # ResNet-56 compiled next (the epoch-time target), but never at the cost of the denoisers' eager rows.
    reserve = spent.get("pair", guess["pair"]) * 2 * len(DENOISERS)
    attempt("compiled", "resnet56 3×3 compiled", lambda: compiled("resnet56", 3, reserve), reserve=reserve)
    for k in (3, 5):
        for model in DENOISERS:
            attempt("pair", f"{model} {k}×{k}", lambda m=model, k=k: pair(m, k, div2k))
    del cifar, div2k
    for model, k in [("dncnn", 3), *[(m, 3) for m in CLASSIFIERS[1:]],
                     *[(m, k) for k in (3, 5) for m in DENOISERS if (m, k) != ("dncnn", 3)]]:
        attempt("compiled", f"{model} {k}×{k} compiled", lambda m=model, k=k: compiled(m, k))
    return out


# ---------------------------------------------------------------- tables


def _fmt(x: Optional[float], spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def _busy(row: dict) -> str:
    b = row["busy"]
    return "—" if b["standard"] is None else f"{b['standard']:.0%}/{b['weighted']:.0%}"


def _compile_s(row: Optional[dict]) -> str:
    """Warm-up seconds of a compiled pair (compilation of the standard + the weighted model)."""
    return "—" if row is None else "{standard:.0f} + {weighted:.0f}".format(**row["warmup_s"])


def tables(out: dict) -> str:
    lines = [f"Device: {out['device']}; torch {out['torch']}; {'SMALL CPU sizes (not comparable with the paper)' if out['small'] else 'paper batch sizes'}; "
             f"epoch seconds extrapolated from the step rate (training only); compiled backend {out['compile_backend']}.",
             ""]
    eager = {(r["model"], r["kernel_size"]): r for r in out["pairs"] if not r["compiled"]}
    comp = {(r["model"], r["kernel_size"]): r for r in out["pairs"] if r["compiled"]}
    for title, keys, epoch, paper in (
            ("CIFAR-100 (Table 4, A100), epoch = 45,000 images", [(m, 3) for m in CLASSIFIERS], CIFAR_TRAIN,
             lambda m, k: PAPER_TABLE_4.get(m)),
            ("DIV2K denoising (Table 6), epoch = 11,520 64×64 patches (paper's epoch not stated: indicative)",
             [(m, k) for k in (3, 5) for m in DENOISERS], DIV2K_PATCHES, lambda m, k: PAPER_TABLE_6.get((k, m)))):
        lines += [f"### {title}", "",
                  "| model | batch | epoch s std / wtd | wtd/std | paper s std / wtd | paper wtd/std | speed-up vs paper "
                  "| compiled epoch s std / wtd | compiled wtd/std | compile s | GPU busy std/wtd |",
                  "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for m, k in keys:
            r, c, p = eager.get((m, k)), comp.get((m, k)), paper(m, k)
            if r is None and c is None:
                lines.append(f"| {m} {k}×{k} | — | not measured (see skipped) | | | | | | | | |")
                continue
            e_s = (epoch / r["standard_ex_s"], epoch / r["weighted_ex_s"]) if r else None
            c_s = (epoch / c["standard_ex_s"], epoch / c["weighted_ex_s"]) if c else None
            lines.append(
                f"| {m} {k}×{k} | {(r or c)['batch']} | {f'{e_s[0]:.2f} / {e_s[1]:.2f}' if e_s else '—'} "
                f"| {_fmt(r and r['weighted_over_standard'], '.3f')} | {f'{p[0]:g} / {p[1]:g}' if p else '—'} "
                f"| {f'{p[1] / p[0]:.3f}' if p else '—'} "
                f"| {f'{p[0] / e_s[0]:.0f}×' if p and e_s and not out['small'] else '—'} "
                f"| {f'{c_s[0]:.2f} / {c_s[1]:.2f}' if c_s else '—'} | {_fmt(c and c['weighted_over_standard'], '.3f')} "
                f"| {_compile_s(c)} | {_busy(r) if r else '—'} |")
        lines.append("")
    single = eager.get(("resnet56", 3))
    unit = out["unit"]
    lines += [f"### ResNet-56 (weighted) trials per {unit}-hour", "",
              f"| setup | trials at once | ex/s (all) | epoch s per trial | trial-epochs / {unit}-h "
              f"| 200-epoch trials / {unit}-h | vs one per {unit} | GPU busy |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
    base = single["weighted_ex_s"] if single else None
    rows = ([(f"(a) one trial per {unit}", 1, base, single["busy"]["weighted"])] if single else []) + \
        [(f"(b) {r['trials']} processes packed", r["trials"], r["ex_s"], None) for r in out["packed"]] + \
        [(f"(c) fused K = {r['trials']}", r["trials"], r["ex_s"], r["busy"]) for r in out["fused"]]
    for name, n, ex_s, busy in rows:
        per_h = 3600 * ex_s / CIFAR_TRAIN
        lines.append(f"| {name} | {n} | {ex_s:,.1f} | {CIFAR_TRAIN * n / ex_s:,.1f} | {per_h:,.3g} "
                     f"| {per_h / TRIAL_EPOCHS:.3g} | {f'{ex_s / base:.2f}×' if base else '—'} | {_fmt(busy, '.0%')} |")
    lines += ["", *_targets(out, eager, base)]
    if out["skipped"]:
        lines += ["", "Skipped or failed: " + "; ".join(out["skipped"])]
    return "\n".join(lines)


def _targets(out: dict, eager: dict, base: Optional[float]) -> list[str]:
    said = []
    r = eager.get(("resnet56", 3))
    if r and not out["small"]:
        said.append(f"- ResNet-56 epoch ≤ 5 s at batch 128: {CIFAR_TRAIN / r['standard_ex_s']:.2f} s standard, "
                    f"{CIFAR_TRAIN / r['weighted_ex_s']:.2f} s weighted")
    if eager:
        worst = max(eager.values(), key=lambda x: x["weighted_over_standard"])
        said.append(f"- weighted/standard ≤ 1.02: highest {worst['weighted_over_standard']:.3f} "
                    f"({worst['model']} {worst['kernel_size']}×{worst['kernel_size']})")
    by_k = {f["trials"]: f["ex_s"] for f in out["fused"]}
    if base and 8 in by_k:
        said.append(f"- fused K = 8 ≥ 4× the trials per hour of one trial per {out['unit']}: {by_k[8] / base:.2f}×")
    if base and 4 in by_k:
        said.append(f"- fused K = 4 not slower per member than separate trials (member-epochs per hour vs a lone "
                    f"trial's epochs per hour): {by_k[4] / base:.2f}×")
    return ["Targets (issue 10):", *said] if said else []


def write(out: dict, text: str, path: Optional[str]) -> None:
    if not path:
        return
    stem = Path(path)
    if stem.suffix in (".json", ".md"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1))
    stem.with_suffix(".md").write_text(text + "\n")
    print(f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.json')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--small", action=argparse.BooleanOptionalAction, default=None,
                        help="small sizes (default: on for the CPU, off for a GPU)")
    parser.add_argument("--budget-s", type=float, default=390.0,
                        help="wall-clock budget of the whole run, compile warm-ups included (default 390)")
    parser.add_argument("--compile-backend", choices=("inductor", "aot_eager"),
                        help="default: inductor on CUDA, aot_eager on the CPU (inductor compiles for minutes there)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", help="write <out>.md and <out>.json")
    parser.add_argument("--compiled-pair", help=argparse.SUPPRESS)  # child process: MODEL:KERNEL
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "gpu.py: --device cuda but torch.cuda.is_available() is False; use --device cpu\n")
    if args.small is None:
        args.small = args.device == "cpu"
    if args.compile_backend is None:
        args.compile_backend = "inductor" if args.device == "cuda" else "aot_eager"
    if args.budget_s <= 0:
        parser.exit(2, f"gpu.py: --budget-s must be > 0, got {args.budget_s}\n")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compiled_pair:
        model, k = args.compiled_pair.split(":")
        device, sizes = torch.device(args.device), SMALL_SIZES if args.small else GPU_SIZES
        data = cifar_like(device, sizes.cifar_images) if model in CLASSIFIERS else div2k_like(
            device, sizes.div2k_images, sizes.div2k_shape)
        print(json.dumps(measure_pair(model, int(k), data, sizes, device, True, args.compile_backend)))
        return
    out = run(args)
    out["wall_s"] = time.perf_counter() - STARTED
    text = tables(out) + f"\n\nWall time {out['wall_s']:.0f} s (budget {args.budget_s:.0f} s)."
    print("\n" + text)
    write(out, text, args.out)


if __name__ == "__main__":
    main()
