"""One trial: fairness across α, exact resume from a checkpoint, failure on a non-finite loss, early stopping."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest
import torch

from wconv.train import (
    CHECKPOINT,
    CONFUSION_MATRIX,
    FINAL,
    EpochReport,
    FinalMetrics,
    FinalReport,
    TrainingConfig,
    TrialConfig,
    final_value,
    prepare_trial,
    resume_trial,
    run_trial,
    validation_metrics,
)

torch.set_num_threads(1)


def _config(**training) -> TrialConfig:
    tc = TrainingConfig.for_task("classification", epochs=4, batch_size=64, max_steps_per_epoch=4, hflip=False,
                                 **training)
    return TrialConfig(model="tiny_cnn", dataset="digits", kernel_size=3, alpha=(0.7,), seed=3, training=tc)


def _first_batches(setup, n=3):
    batches = setup.data.train.batches(32, setup.order)
    return [next(batches) for _ in range(n)]


def test_same_seed_gives_same_initial_weights_and_data_order_whatever_alpha():
    weighted = prepare_trial(_config())
    standard = prepare_trial(replace(_config(), alpha=None))
    other_alpha = prepare_trial(replace(_config(), alpha=(1.3,)))
    for a, b, c in zip(weighted.model.state_dict().values(), standard.model.state_dict().values(),
                       other_alpha.model.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    for (xa, ya), (xb, yb) in zip(_first_batches(weighted), _first_batches(standard)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_another_seed_gives_other_weights_and_order():
    a, b = prepare_trial(_config()), prepare_trial(replace(_config(), seed=4))
    assert not torch.equal(next(iter(a.model.parameters())), next(iter(b.model.parameters())))
    assert not torch.equal(_first_batches(a, 1)[0][1], _first_batches(b, 1)[0][1])


class _Killed(Exception):
    pass


def test_trial_resumed_from_its_checkpoint_continues_exactly(tmp_path):
    config = _config()
    straight = []
    run_trial(config, lambda m, d: straight.append(m), tmp_path / "straight")

    def kill_after_two(metrics, directory):
        if metrics["epoch"] == 2:
            raise _Killed  # the process dies right after epoch 2's checkpoint
    with pytest.raises(_Killed):
        run_trial(config, kill_after_two, tmp_path / "resumed")
    resumed = []
    resume_trial(tmp_path / "resumed", lambda m, d: resumed.append(m))  # from the checkpoint folder alone

    assert [m["epoch"] for m in resumed] == [3, 4]
    assert [m["epoch"] for m in resumed[0]["replay"]] == [1, 2]  # epochs whose reports may have been lost
    assert "replay" not in resumed[1]
    keys = ("train_loss", "val_loss", "val_accuracy", "lr")
    assert [{k: m[k] for k in keys} for m in straight[2:]] == [{k: m[k] for k in keys} for m in resumed]
    assert straight[-1]["final"] == resumed[-1]["final"]
    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# What trial.pt held before its format moved to wconv.checkpoint, written out here rather than imported: a
# checkpoint of an earlier version must still resume, so change these only with a way to read the earlier layout.
EARLIER_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "order", "rng", "state", "config")
EARLIER_PROGRESS_FIELDS = ("epoch", "best_val_loss", "best_epoch", "best_model", "best_metrics", "bad_epochs",
                           "history", "elapsed", "result")


def _die_after(epoch: int):
    """A ``report`` that kills the trial right after epoch ``epoch``'s checkpoint."""
    def report(metrics, directory):
        if metrics["epoch"] == epoch:
            raise _Killed
    return report


def test_a_checkpoint_in_the_earlier_layout_still_resumes_exactly(tmp_path):
    config, straight, path = _config(), [], tmp_path / "earlier" / CHECKPOINT
    run_trial(config, lambda m, d: straight.append(m), tmp_path / "straight")
    with pytest.raises(_Killed):
        run_trial(config, _die_after(2), path.parent)
    written = torch.load(path, weights_only=False)
    assert tuple(written) == EARLIER_CHECKPOINT_KEYS
    assert tuple(written["state"]) == EARLIER_PROGRESS_FIELDS
    assert set(written["rng"]) == {"torch", "numpy", "python"}
    assert written["config"] == asdict(config)
    # Rewritten as the earlier train.py wrote it: a plain dict of those keys, by torch.save itself.
    earlier = {k: written[k] for k in EARLIER_CHECKPOINT_KEYS}
    earlier["state"] = {k: written["state"][k] for k in EARLIER_PROGRESS_FIELDS}
    torch.save(earlier, path)

    resumed = []
    resume_trial(tmp_path / "earlier", lambda m, d: resumed.append(m))
    assert [m["epoch"] for m in resumed] == [3, 4]
    keys = ("train_loss", "val_loss", "val_accuracy", "lr")
    assert [{k: m[k] for k in keys} for m in straight[2:]] == [{k: m[k] for k in keys} for m in resumed]
    assert straight[-1]["final"] == resumed[-1]["final"]


def test_restarting_a_finished_trial_reports_its_result_again_without_training(tmp_path):
    config = _config()
    first = run_trial(config, lambda m, d: None, tmp_path)
    again = []
    assert run_trial(config, lambda m, d: again.append(m), tmp_path) == first
    assert len(again) == 1 and again[0]["finished"]


def test_last_report_carries_status_final_validation_and_test_metrics(tmp_path):
    reports = []
    run_trial(_config(), lambda m, d: reports.append(m), tmp_path)
    assert [m.get("finished", False) for m in reports] == [False, False, False, True]
    last = reports[-1]
    assert last["trial_status"] == "completed"
    assert {"val_accuracy", "val_f1", "val_loss", "test_accuracy", "test_f1", "best_epoch"} <= set(last["final"])
    best = min(reports, key=lambda m: m["val_loss"])
    assert last["final"]["best_epoch"] == best["epoch"]
    assert last["final"]["val_accuracy"] == best["val_accuracy"]
    assert final_value(last, "val_accuracy") == best["val_accuracy"]


def test_reports_hold_exactly_the_protocols_keys_and_the_test_confusion_matrix(tmp_path):
    reports = []
    run_trial(_config(), lambda m, d: reports.append(m), tmp_path)
    declared = set(FinalReport.__annotations__)
    for m in reports[:-1]:
        assert {k for k in m if not k.startswith("val_")} == set(EpochReport.__annotations__) - {"replay"}
    assert {k for k in reports[-1] if not k.startswith("val_")} == declared - {"replay"}
    final = reports[-1][FINAL]
    assert {k for k in final if not k.startswith(("val_", "test_"))} | {CONFUSION_MATRIX} == set(FinalMetrics.__annotations__)
    matrix = torch.tensor(final[CONFUSION_MATRIX])
    test_size = len(prepare_trial(_config()).data.test)
    assert matrix.shape == (10, 10) and matrix.dtype == torch.int64 and matrix.sum() == test_size
    assert matrix.diag().sum().item() / test_size == pytest.approx(final["test_accuracy"], abs=1e-6)


def test_non_finite_loss_ends_the_trial_as_failed_with_the_reason(tmp_path):
    reports = []
    result = run_trial(_config(lr=float("inf")), lambda m, d: reports.append(m), tmp_path)
    assert result["trial_status"] == "failed"
    assert "non-finite" in result["reason"]
    assert result["epoch"] < 4
    assert result["final"] == {} and final_value(result, "val_accuracy") is None


def test_early_stopping_ends_trial_but_never_the_baseline(tmp_path):
    # lr 0 makes validation loss constant: no improvement after the first epoch.
    config = replace(_config(lr=1e-30, patience=1), training=replace(_config().training, lr=1e-30, patience=1))
    stopped = run_trial(config, lambda m, d: None, tmp_path / "a")
    assert stopped["trial_status"] == "completed" and "early stopping" in stopped["reason"]
    assert stopped["epoch"] == 2
    baseline = run_trial(replace(config, alpha=None, baseline=True), lambda m, d: None, tmp_path / "b")
    assert baseline["epoch"] == 4 and "full budget" in baseline["reason"]


def _denoising(**training) -> TrialConfig:
    tc = TrainingConfig.for_task("denoising", epochs=1, batch_size=16, max_steps_per_epoch=2, **training)
    return TrialConfig(model="tiny_denoiser", dataset="natural", kernel_size=5, alpha=(0.1, 0.9), seed=0,
                       training=tc, dataset_options={"limit": 2})


def test_denoising_validates_cheap_metrics_each_epoch_and_tests_every_metric(tmp_path):
    reports = []
    result = run_trial(_denoising(), lambda m, d: reports.append(m), tmp_path)
    assert result["trial_status"] == "completed"
    assert {k for k in reports[0] if k.startswith("val_")} == {"val_loss", "val_psnr", "val_ssim", "val_nrmse"}
    assert {"test_loss", "test_psnr", "test_ssim", "test_fsim", "test_nrmse", "test_uiq"} <= set(result["final"])


def test_a_search_metric_added_to_validation_is_reported_every_epoch(tmp_path):
    training = _denoising().training.validating("denoising", "val_uiq")
    assert training.val_metrics == ("psnr", "ssim", "nrmse", "uiq")
    reports = []
    run_trial(replace(_denoising(), training=training), lambda m, d: reports.append(m), tmp_path)
    assert "val_uiq" in reports[0] and "val_fsim" not in reports[0]


def test_val_metrics_are_checked_against_the_metric_names_and_the_task():
    assert TrainingConfig(val_metrics=["f1"]).val_metrics == ("f1",)  # a YAML list becomes a tuple
    assert validation_metrics(TrainingConfig(), "classification") == ("accuracy", "f1")
    assert TrainingConfig().validating("classification", "val_loss").val_metrics == ("accuracy", "f1")
    with pytest.raises(ValueError, match="training.val_metrics: unknown metric.*'psrn'"):
        TrainingConfig(val_metrics=("psrn",))
    with pytest.raises(ValueError, match="training.val_metrics: 'psnr' not classification metric"):
        validation_metrics(TrainingConfig(val_metrics=("psnr",)), "classification")


def test_channels_last_converts_the_4d_weights_of_a_model_with_a_conv3d():
    from wconv.models import build
    from wconv.train import _channels_last

    model = build("gac_snn", width=0.125)
    _channels_last(model)
    four_d = [p for p in model.parameters() if p.dim() == 4]
    assert four_d and all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)
    assert any(p.dim() == 5 for p in model.parameters())


def test_the_init_scale_control_scales_the_would_be_weighted_initial_weights_and_nothing_else(tmp_path):
    from wconv import density_scale

    standard = prepare_trial(replace(_config(), alpha=None))
    control = prepare_trial(replace(_config(), alpha=None, init_scale=(0.6,)))
    scale = density_scale((3, 3), 0.6)
    convs = {name: m.kernel_size for name, m in standard.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert any(k == (3, 3) for k in convs.values())
    for name, value in standard.model.state_dict().items():
        other = control.model.state_dict()[name]
        module = name.rsplit(".", 1)[0]
        if name.endswith("weight") and convs.get(module) == (3, 3):
            assert torch.allclose(other, value * scale)
        else:
            assert torch.equal(other, value)
    for (xa, ya), (xb, yb) in zip(_first_batches(standard), _first_batches(control)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    restored = TrialConfig.from_dict(asdict(replace(_config(), init_scale=(0.6,))))
    assert restored.init_scale == (0.6,)
