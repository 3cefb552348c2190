"""Φ once per step (``wconv.conv.DensityStep``): the same trials as the per-conv operator, a constant operator count."""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import wconv.fused
import wconv.train
from wconv.conv import DensityStep
from wconv.fused import run_group
from wconv.train import CHECKPOINT, MEMBER, Trial, TrainingConfig, TrialConfig, run_trial

torch.set_num_threads(1)

NUMBERS = ("train_loss", "lr")


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def per_conv(monkeypatch):
    """Turn the reference on: the trial's and the group's ``DensityStep`` holds no conv, so every conv
    computes ``weight ∘ Φ`` in its own forward (today's operator, what a module alone does)."""
    def use():
        reference = functools.partial(DensityStep, once=False)
        monkeypatch.setattr(wconv.train, "DensityStep", reference)
        monkeypatch.setattr(wconv.fused, "DensityStep", reference)
    return use


def _resnet(**training) -> TrialConfig:
    """ResNet (BatchNorm) at depth 8, width 0.25 on digits: SGD with momentum and weight decay, 12 steps."""
    tc = TrainingConfig.for_task("classification", **{"epochs": 4, "batch_size": 32, "max_steps_per_epoch": 3,
                                                       "weight_decay": 5e-4, **training})
    return TrialConfig(model="resnet56", dataset="digits", alpha=(0.6,), seed=3, training=tc,
                       model_options={"depth": 8, "width": 0.25}, dataset_options={"limit": 96})


def _denoiser(**training) -> TrialConfig:
    """tiny_denoiser at 5×5 on natural with Adam, 12 steps."""
    tc = TrainingConfig.for_task("denoising", **{"epochs": 4, "batch_size": 16, "max_steps_per_epoch": 3, **training})
    return TrialConfig(model="tiny_denoiser", dataset="natural", kernel_size=5, alpha=(0.1, 0.9), seed=1,
                       training=tc, dataset_options={"limit": 2, "tiles_per_image": 12})


CASES = {"resnet-bn-sgd-momentum-wd": _resnet(), "denoiser-5x5-adam": _denoiser(),
         "resnet-learnable-alpha": _resnet(learnable_alpha=True)}


def _numbers(report: dict) -> dict:
    out = {k: v for k, v in report.items() if k.startswith("val_") or k in NUMBERS}
    out.update({f"final.{k}": v for k, v in report.get("final", {}).items() if k != "test_confusion_matrix"})
    return out


def _assert_same(reference: list[dict], once: list[dict]) -> None:
    assert len(reference) == len(once) >= 4
    for a, b in zip(reference, once):
        assert _numbers(b) == pytest.approx(_numbers(a), rel=1e-9, abs=1e-12)
        assert set(_numbers(b)) == set(_numbers(a))
    assert once[-1]["final"].get("test_confusion_matrix") == reference[-1]["final"].get("test_confusion_matrix")


def _models_equal(a, b) -> None:
    a, b = (torch.load(p, weights_only=False)["model"] for p in (a, b))
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_run_trial_once_per_step_equals_the_per_conv_operator(float64, per_conv, tmp_path, case):
    config = CASES[case]
    once = []
    run_trial(config, lambda m, d: once.append(m), tmp_path / "once")
    per_conv()
    reference = []
    run_trial(config, lambda m, d: reference.append(m), tmp_path / "reference")
    _assert_same(reference, once)
    _models_equal(tmp_path / "reference" / CHECKPOINT, tmp_path / "once" / CHECKPOINT)


@pytest.mark.parametrize("case, alphas", [("resnet-bn-sgd-momentum-wd", [None, (0.6,), (1.4,)]),
                                          ("denoiser-5x5-adam", [(0.1, 0.9), None, (0.5, 1.2)]),
                                          ("resnet-learnable-alpha", [(0.6,), (1.4,)])])
def test_run_group_once_per_step_equals_the_per_conv_operator(float64, per_conv, tmp_path, case, alphas):
    members = [replace(CASES[case], alpha=a, baseline=a is None) for a in alphas]

    def run(directory):
        reports = [[] for _ in members]
        run_group(members, lambda m, d: reports[m[MEMBER]].append(m), directory)
        return reports

    once = run(tmp_path / "once")
    per_conv()
    reference = run(tmp_path / "reference")
    for i, (a, b) in enumerate(zip(reference, once)):
        _assert_same(a, b)
        member = f"member-{i}"
        _models_equal(tmp_path / "reference" / member / CHECKPOINT, tmp_path / "once" / member / CHECKPOINT)


def _outermost_aten(prof) -> int:
    """aten calls not made inside another aten call (a multi-tensor op counts once, whatever it does inside)."""
    def inside_aten(event):
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return True
            parent = parent.cpu_parent
        return False
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and not inside_aten(e))


def _ops_per_step(config: TrialConfig, tmp_path) -> float:
    """Outermost aten operators per training step of ``run_trial`` (its ``train_epoch``): a 4-step epoch minus a
    2-step one, over 2 (what every epoch does once, the scheduler's step and the loss's read-out, cancels)."""
    trial, counts = Trial(config, tmp_path), []
    for steps in (2, 2, 4):  # the first epoch's first-call work (allocations, caches) is left out of the count
        trial.training = replace(trial.training, max_steps_per_epoch=steps)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trial.train_epoch()
        counts.append(_outermost_aten(prof))
    return (counts[2] - counts[1]) / 2


def _density_ops(depth: int, tmp_path) -> float:
    tc = TrainingConfig.for_task("classification", epochs=3, batch_size=32)
    config = TrialConfig(model="resnet56", dataset="digits", alpha=(0.8,), seed=0, training=tc,
                         model_options={"depth": depth, "width": 0.25}, dataset_options={"limit": 128})
    return _ops_per_step(config, tmp_path) - _ops_per_step(replace(config, alpha=None), tmp_path)


def test_the_density_adds_a_constant_number_of_operators_per_step_whatever_the_number_of_convs(per_conv, tmp_path):
    resnet56, resnet110 = _density_ops(56, tmp_path), _density_ops(110, tmp_path)  # 55 and 109 weighted convs
    assert resnet56 == resnet110 <= 8, (resnet56, resnet110)
    per_conv()
    reference = _density_ops(56, tmp_path)
    assert reference >= 2 * 55, reference  # what the count would catch: two per conv
