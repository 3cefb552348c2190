"""The confirmation's control arms in wconv: init-shape (``shape_init``) and lr-shape (``LRShape``).

Under SGD the two together *are* the weighted convolution (``LRShape``'s docstring derives it): a standard
conv started at V₀ = Φ ∘ W₀ whose loss gradient is multiplied by Φ² follows V = Φ ∘ W of the weighted conv,
with momentum, Nesterov and weight decay. Under Adam the identity holds up to ε (ε/Φ instead of ε): exact
with ε = 0.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from wconv import WeightedConv2d, convert, density, shape_init
from wconv.conv import LRShape
from wconv.train import CHECKPOINT, TrainingConfig, TrialConfig, build_model, load_data, run_trial

torch.set_num_threads(1)


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _resnet(alpha=(0.6,)) -> TrialConfig:
    """ResNet (BatchNorm) at depth 8 on digits: SGD with momentum and weight decay, 12 steps over 4 epochs."""
    tc = TrainingConfig.for_task("classification", epochs=4, batch_size=32, max_steps_per_epoch=3, weight_decay=5e-4)
    return TrialConfig(model="resnet56", dataset="digits", alpha=alpha, seed=3, training=tc,
                       model_options={"depth": 8, "width": 0.25}, dataset_options={"limit": 96})


def _denoiser_sgd(alpha=(0.1, 0.9)) -> TrialConfig:
    """tiny_denoiser at 5×5 on natural images, trained with SGD (momentum, weight decay)."""
    tc = TrainingConfig.for_task("denoising", epochs=4, batch_size=16, max_steps_per_epoch=3, optimizer="sgd",
                                 lr=0.05, momentum=0.9, weight_decay=1e-3)
    return TrialConfig(model="tiny_denoiser", dataset="natural", kernel_size=5, alpha=alpha, seed=1, training=tc,
                       dataset_options={"limit": 2, "tiles_per_image": 12})


def _numbers(report: dict) -> dict:
    out = {k: v for k, v in report.items() if k.startswith("val_") or k in ("train_loss", "lr")}
    out.update({f"final.{k}": v for k, v in report.get("final", {}).items() if k != "test_confusion_matrix"})
    return out


@pytest.mark.parametrize("make", [_resnet, _denoiser_sgd], ids=["resnet-bn-3x3", "denoiser-5x5"])
def test_init_shape_and_lr_shape_together_are_the_weighted_conv_under_sgd(float64, tmp_path, make):
    weighted = make()
    both = replace(weighted, alpha=None, init_shape=weighted.alpha, lr_shape=weighted.alpha)
    runs = {}
    for name, config in {"weighted": weighted, "both": both, "init-shape": replace(both, lr_shape=None)}.items():
        runs[name] = []
        run_trial(config, lambda m, d, r=runs[name]: r.append(m), tmp_path / name)
    assert len(runs["weighted"]) == len(runs["both"]) == 4
    for a, b in zip(runs["weighted"], runs["both"]):
        assert set(_numbers(a)) == set(_numbers(b))
        assert _numbers(b) == pytest.approx(_numbers(a), rel=1e-9, abs=1e-12)
    # the control holds V, the weighted trial W: V = Φ ∘ W, conv by conv
    w = torch.load(tmp_path / "weighted" / CHECKPOINT, weights_only=False)["model"]
    v = torch.load(tmp_path / "both" / CHECKPOINT, weights_only=False)["model"]
    assert set(w) == set(v)
    model = build_model(weighted, load_data(weighted))
    weighted_convs = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, WeightedConv2d)}
    assert weighted_convs
    phi = density((weighted.kernel_size,) * 2, weighted.alpha, dtype=torch.float64)
    for k in v:
        expected = w[k] * phi if k in weighted_convs else w[k]
        torch.testing.assert_close(v[k], expected, rtol=1e-9, atol=1e-12)
    # and either part alone is not: the init shape without the learning rate diverges from the weighted trial
    assert _numbers(runs["init-shape"][-1]) != pytest.approx(_numbers(runs["weighted"][-1]), rel=1e-6)


def _convs(seed: int, kernel: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, kernel, padding=kernel // 2), nn.ReLU(),
                         nn.Conv2d(4, 2, kernel, padding=kernel // 2))


def _steps(model: nn.Module, optimizer, step, n: int = 5) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        x = torch.randn(3, 2, 6, 6, generator=g)
        optimizer.zero_grad()
        model(x).square().mean().backward()
        step(optimizer)


@pytest.mark.parametrize("make, kernel, alpha", [
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2), 3, 0.6),
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3, weight_decay=1e-2), 5, (0.2, 0.8)),
    (lambda p: torch.optim.Adam(p, lr=1e-2, eps=0.0), 3, 1.4),
], ids=["sgd-nesterov-wd", "sgd-dampening-5x5", "adam-eps0"])
def test_lr_shape_with_shape_init_follows_the_weighted_conv_step_for_step(float64, make, kernel, alpha):
    weighted = convert(_convs(0, kernel), {kernel: alpha})
    opt_w = make(weighted.parameters())
    _steps(weighted, opt_w, lambda o: o.step())
    control = shape_init(_convs(0, kernel), {kernel: alpha})
    opt_c = make(control.parameters())
    shape = LRShape(control, {kernel: alpha}, "adam" if isinstance(opt_c, torch.optim.Adam) else "sgd")
    _steps(control, opt_c, shape.step)
    for mw, mc in zip(weighted, control):
        if isinstance(mc, nn.Conv2d):
            torch.testing.assert_close(mc.weight, mw.effective_weight(), rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(mc.bias, mw.bias, rtol=1e-9, atol=1e-12)


def test_lr_shape_under_adam_is_the_weighted_conv_only_up_to_eps(float64):
    weighted = convert(_convs(0), {3: 0.3})
    opt_w = torch.optim.Adam(weighted.parameters(), lr=1e-2, eps=1e-3)  # ε near √v̂: the approximation shows
    _steps(weighted, opt_w, lambda o: o.step())
    control = shape_init(_convs(0), {3: 0.3})
    opt_c = torch.optim.Adam(control.parameters(), lr=1e-2, eps=1e-3)
    _steps(control, opt_c, LRShape(control, {3: 0.3}, "adam").step)
    gap = (control[0].weight - weighted[0].effective_weight()).abs().max() / weighted[0].effective_weight().abs().max()
    assert 1e-9 < gap < 0.2


def test_lr_shape_refuses_the_optimisers_its_derivation_does_not_cover():
    adam_wd = TrainingConfig.for_task("denoising", weight_decay=1e-4)
    with pytest.raises(ValueError, match="without weight decay"):
        TrialConfig(model="tiny_denoiser", dataset="natural", lr_shape=(0.8,), training=adam_wd)
    with pytest.raises(ValueError, match="learnable_alpha"):
        TrialConfig(model="tiny_denoiser", dataset="natural", lr_shape=(0.8,),
                    training=TrainingConfig.for_task("denoising", learnable_alpha=True))
    with pytest.raises(ValueError, match="covers sgd and adam"):
        LRShape(_convs(0), {3: 0.8}, "rmsprop")
    TrialConfig(model="tiny_denoiser", dataset="natural", lr_shape=(0.8,),
                training=TrainingConfig.for_task("denoising"))  # Adam without weight decay: covered


def test_confirm_refuses_a_control_for_a_model_with_no_weighted_conv(tmp_path, monkeypatch, capsys):
    """A model whose convs are all 1×1: α changes nothing there, so no control can differ from α = 1."""
    import yaml

    from launch.cli import main
    from wconv.models import registry

    def pointwise(*, kernel_size, in_channels, num_classes, width=1.0):
        return nn.Sequential(nn.Conv2d(in_channels, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, num_classes))

    monkeypatch.setitem(registry._MODELS, "pointwise", registry._Entry("classification", pointwise, 1, 10))
    sweep = {"name": "t", "task": "classification", "dataset": {"name": "digits"},
             "models": ["tiny_cnn", "pointwise"], "kernels": {3: [[0.5, 1.5]]}, "search": {"num_samples": 2},
             "storage": f"sqlite:///{tmp_path / 'none.db'}"}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(sweep))
    before = sorted(tmp_path.rglob("*"))
    assert main(["confirm", str(path), "--seeds", "2", "--control", "init-shape", "--runs-dir",
                 str(tmp_path / "runs")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert "--control init-shape: pointwise 3×3 has no conv the density weights" in err
    assert "the (model, kernel) pairs with one: tiny_cnn 3×3" in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_the_control_fields_survive_a_checkpoints_config_round_trip():
    from dataclasses import asdict

    config = replace(_denoiser_sgd(), alpha=None, init_shape=(0.1, 0.9), lr_shape=(0.1, 0.9))
    restored = TrialConfig.from_dict(asdict(config))
    assert restored == config and restored.lr_shape == (0.1, 0.9) and isinstance(restored.init_shape, tuple)
