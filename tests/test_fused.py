"""Fused α-trials: every member of a group is the trial run_trial runs alone with its α and the cell's seed."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from wconv.fused import GROUP_CHECKPOINT, check_group, run_group
from wconv.train import (
    ALPHA,
    CHECKPOINT,
    MEMBER,
    TrainingConfig,
    TrialConfig,
    resume_trial,
    run_trial,
)

torch.set_num_threads(1)

SHARED = ("epoch", "lr", "baseline", "finished", "trial_status", "reason")


@pytest.fixture
def float64():
    """Trials in float64, so fused and lone runs can be compared tightly (the data is cast to the model's dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _resnet(**training) -> TrialConfig:
    """ResNet (BatchNorm, shortcut A) at depth 8 and width 0.25 on digits, SGD with momentum and weight decay."""
    tc = TrainingConfig.for_task("classification", **{"epochs": 3, "batch_size": 32, "max_steps_per_epoch": 3,
                                                       **training})
    return TrialConfig(model="resnet56", dataset="digits", seed=3, training=tc, model_options={"depth": 8, "width": 0.25},
                       dataset_options={"limit": 96})


def _denoiser(**training) -> TrialConfig:
    """tiny_denoiser at 5×5 on natural, Adam; every metric at the final test."""
    tc = TrainingConfig.for_task("denoising", **{"epochs": 3, "batch_size": 16, "max_steps_per_epoch": 3, **training})
    return TrialConfig(model="tiny_denoiser", dataset="natural", kernel_size=5, seed=1, training=tc,
                       dataset_options={"limit": 2, "tiles_per_image": 12})


def _members(config: TrialConfig, alphas) -> list[TrialConfig]:
    return [replace(config, alpha=a, baseline=a is None) for a in alphas]


def _alone(members, tmp_path) -> list[list[dict]]:
    runs = []
    for i, member in enumerate(members):
        reports = []
        run_trial(member, lambda m, d: reports.append(m), tmp_path / f"alone-{i}")
        runs.append(reports)
    return runs


def _fused(members, directory, stop=lambda m: None) -> tuple[list[list[dict]], list[dict]]:
    reports = [[] for _ in members]

    def report(metrics, member_dir):
        assert member_dir == directory / f"member-{metrics[MEMBER]}"
        reports[metrics[MEMBER]].append(metrics)
        return stop(metrics)

    results = run_group(members, report, directory)
    return reports, results


def _assert_same_trial(alone: list[dict], fused: list[dict], rel: float = 1e-9) -> None:
    assert len(alone) == len(fused)
    for a, f in zip(alone, fused):
        numbers = [k for k, v in a.items() if k.startswith("val_") or k == "train_loss"]
        assert set(numbers) == {k for k in f if k.startswith("val_") or k == "train_loss"}
        assert {k: f[k] for k in numbers} == pytest.approx({k: a[k] for k in numbers}, rel=rel, abs=1e-12)
        assert {k: f.get(k) for k in SHARED} == {k: a.get(k) for k in SHARED}
    if "final" in alone[-1]:
        final_a, final_f = alone[-1]["final"], fused[-1]["final"]
        assert set(final_a) == set(final_f)
        matrix = "test_confusion_matrix"
        assert final_f.get(matrix) == final_a.get(matrix)
        assert {k: v for k, v in final_f.items() if k != matrix} == pytest.approx(
            {k: v for k, v in final_a.items() if k != matrix}, rel=rel, abs=1e-12)


@pytest.mark.parametrize("config, alphas", [(_resnet(), [None, (0.6,), (1.4,)]),
                                            (_denoiser(), [(0.1, 0.9), None, (0.5, 1.2)])],
                         ids=["resnet-bn-sgd", "denoiser-adam"])
def test_each_member_equals_its_lone_trial(float64, tmp_path, config, alphas):
    members = _members(config, alphas)
    alone = _alone(members, tmp_path)
    fused, results = _fused(members, tmp_path / "group")
    for i, (a, f) in enumerate(zip(alone, fused)):
        _assert_same_trial(a, f)
        assert all(m[MEMBER] == i and m[ALPHA] == (None if alphas[i] is None else list(alphas[i])) for m in f)
        assert results[i] == f[-1]
    # The standard-conv baseline trains as Φ = 1, which is the standard convolution exactly.
    assert alone[alphas.index(None)][-1]["final"]["best_epoch"] >= 1


def test_learnable_alpha_members_train_their_own_alpha_as_alone(float64, tmp_path):
    members = _members(_resnet(learnable_alpha=True, epochs=2), [(0.6,), (1.4,)])
    alone = _alone(members, tmp_path)
    fused, _ = _fused(members, tmp_path / "group")
    for a, f in zip(alone, fused):
        _assert_same_trial(a, f)
    for i, alpha in enumerate((0.6, 1.4)):
        lone = torch.load(tmp_path / f"alone-{i}" / CHECKPOINT, weights_only=False)["model"]
        member = torch.load(tmp_path / "group" / f"member-{i}" / CHECKPOINT, weights_only=False)["model"]
        learned = [k for k in lone if k.endswith("log_alpha")]
        assert learned and all(torch.allclose(member[k], lone[k], rtol=1e-9) for k in learned)
        assert any(not torch.allclose(lone[k].exp(), torch.tensor(alpha)) for k in learned)  # α did move


def test_stopped_and_early_stopped_members_leave_the_others_untouched(float64, tmp_path):
    # lr ~0 keeps validation loss flat: the weighted members stop early after epoch 2; the baseline never does.
    config = _denoiser(lr=1e-30, patience=1, epochs=4)
    members = _members(config, [None, (0.1, 0.9), (0.5, 1.2), (0.3, 0.6)])
    alone = _alone(members[:3], tmp_path)
    fused, results = _fused(members, tmp_path / "group",
                            stop=lambda m: "stopped by ASHA at rung 1" if m[MEMBER] == 3 and m["epoch"] == 1 else None)
    for a, f in zip(alone, fused):
        _assert_same_trial(a, f)
    assert [r["epoch"] for r in results] == [4, 2, 2, 1]
    assert "early stopping" in results[1]["reason"] and "full budget" in results[0]["reason"]
    stopped = results[3]
    assert (stopped["trial_status"], stopped["reason"]) == ("stopped", "stopped by ASHA at rung 1")
    assert stopped["final"]["best_epoch"] == 1 and "val_psnr" in stopped["final"]
    assert not any(k.startswith("test_") for k in stopped["final"])
    assert [m["epoch"] for m in fused[3]] == [1, 1] and fused[3][-1]["finished"]


def test_a_member_with_a_non_finite_loss_fails_alone(tmp_path):
    # α = 1e30 puts 1e60 in the 5×5 density's corners: float32 activations overflow at once.
    members = _members(_denoiser(epochs=2), [(1e30, 1.0), (0.5, 1.2)])
    alone = _alone(members[1:], tmp_path)
    fused, results = _fused(members, tmp_path / "group")
    assert results[0]["trial_status"] == "failed" and "non-finite" in results[0]["reason"]
    assert results[0]["epoch"] == 1 and results[0]["final"] == {}
    assert all(math.isfinite(v) for k, v in fused[1][-1]["final"].items() if k.startswith("test_"))
    _assert_same_trial(alone[0], fused[1], rel=1e-5)  # float32: the fused convs sum in another order


class _Killed(Exception):
    pass


def test_a_killed_group_resumes_exactly_from_its_checkpoint(tmp_path):
    config = _resnet(epochs=4)
    members = _members(config, [None, (0.6,), (1.4,)])
    stop = {"stop": lambda m: "stopped by the scheduler" if m[MEMBER] == 2 and m["epoch"] == 1 else None}
    straight, straight_results = _fused(members, tmp_path / "straight", stop["stop"])

    def killer(m):
        if m["epoch"] == 2 and m[MEMBER] == 1:
            raise _Killed  # dies after epoch 2's checkpoint, member 1's report lost
        return stop["stop"](m)
    with pytest.raises(_Killed):
        _fused(members, tmp_path / "resumed", killer)
    resumed, resumed_results = _fused(members, tmp_path / "resumed", stop["stop"])

    assert _without_time(resumed_results) == _without_time(straight_results)  # bit-exact
    assert [m["epoch"] for m in resumed[1]] == [3, 4] and [m["epoch"] for m in resumed[1][0]["replay"]] == [1, 2]
    assert [m["epoch"] for m in resumed[0]] == [3, 4]  # member 0 had reported epoch 2: replayed all the same
    assert len(resumed[2]) == 1 and resumed[2][0]["trial_status"] == "stopped"  # ended before: told again
    a = torch.load(tmp_path / "straight" / "member-1" / CHECKPOINT, weights_only=False)
    b = torch.load(tmp_path / "resumed" / "member-1" / CHECKPOINT, weights_only=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    momenta = [(x["momentum_buffer"], y["momentum_buffer"]) for x, y in
               zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())]
    assert momenta and all(torch.equal(x, y) for x, y in momenta)


def _without_time(results):
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in results]


def test_a_members_folder_is_a_finished_run_trial_folder(tmp_path):
    members = _members(_resnet(epochs=2), [(0.6,), (1.4,)])
    _, results = _fused(members, tmp_path)
    again = []
    assert resume_trial(tmp_path / "member-1", lambda m, d: again.append(m)) == results[1]
    assert len(again) == 1 and again[0]["finished"]
    assert (tmp_path / GROUP_CHECKPOINT).exists()


def test_adam_moments_are_per_member_after_a_member_leaves(float64, tmp_path):
    # Member 1 leaves after epoch 1; the stacked Adam state is sliced: members 0 and 2 still match alone.
    members = _members(_denoiser(epochs=3), [(0.1, 0.9), (0.2, 0.8), (0.5, 1.2)])
    alone = _alone([members[0], members[2]], tmp_path)
    fused, results = _fused(members, tmp_path / "group", stop=lambda m: "stop" if m[MEMBER] == 1 else None)
    _assert_same_trial(alone[0], fused[0])
    _assert_same_trial(alone[1], fused[2])
    assert (results[1]["trial_status"], results[1]["epoch"]) == ("stopped", 1)


@pytest.mark.parametrize("config", [_resnet(), _denoiser()], ids=["resnet-bn-sgd", "denoiser-adam"])
def test_a_confirmations_arms_fused_each_equal_their_lone_trial(float64, tmp_path, config):
    """α = 1, the chosen α and the initialisation controls (its scale, its shape) of one seed, as ``wconv confirm``
    fuses them: each member is its lone trial (the controls' initial weights are their own, not the baseline's)."""
    alpha = (0.6,) if config.kernel_size == 3 else (0.2, 0.8)
    members = [config, replace(config, alpha=alpha), replace(config, init_scale=alpha),
               replace(config, init_shape=alpha)]
    alone = _alone(members, tmp_path)
    fused, _ = _fused(members, tmp_path / "group")
    for a, f in zip(alone, fused):
        _assert_same_trial(a, f)
    finals = [a[-1]["final"]["val_loss"] for a in alone]
    assert len(set(finals)) == len(finals)  # four different trials, not one trained four times


def test_groups_whose_members_differ_in_more_than_alpha_are_refused():
    base = _resnet()
    with pytest.raises(ValueError, match="member 1: .* may differ only in alpha, baseline, init_scale and init_shape"):
        check_group([replace(base, alpha=(0.5,)), replace(base, alpha=(0.7,), seed=4)])
    with pytest.raises(ValueError, match="distinct alpha"):
        check_group([replace(base, alpha=(0.5,)), replace(base, alpha=(0.5,))])
    with pytest.raises(ValueError, match="distinct alpha"):
        check_group([replace(base, init_scale=(0.5,)), replace(base, init_scale=(0.5,))])
    with pytest.raises(ValueError, match="lr_shape: a fused group"):
        check_group([replace(base, lr_shape=(0.5,))])
    with pytest.raises(ValueError, match="learnable_alpha: the baseline"):
        check_group(_members(_resnet(learnable_alpha=True), [None, (0.5,)]))


@pytest.mark.parametrize("fused", [False, True], ids=["run_trial", "run_group"])
def test_compiled_step_gives_the_eager_results(tmp_path, fused):
    torch._dynamo.reset()
    eager, compiled = (_members(replace(_resnet(), model="tiny_cnn", model_options={}, training=replace(
        _resnet().training, epochs=1, max_steps_per_epoch=2, compile=flag, compile_backend="aot_eager")),
        [(0.6,), (1.4,)]) for flag in (False, True))
    torch._dynamo.utils.counters.clear()
    if fused:
        a, _ = _fused(eager, tmp_path / "eager")
        b, _ = _fused(compiled, tmp_path / "compiled")
    else:
        a, b = _alone(eager[:1], tmp_path / "eager"), _alone(compiled[:1], tmp_path / "compiled")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really was compiled
    for x, y in zip(a, b):
        _assert_same_trial(x, y, rel=1e-5)


# -- every model registered fusable fuses --------------------------------------------------------

TINY = {
    "resnet56": (dict(width=0.25, depth=8), (2, 3, 16, 16)),
    "vgg16": (dict(width=0.125), (2, 3, 32, 32)),
    "nin": (dict(width=0.125), (2, 3, 16, 16)),
    "gmlp": (dict(width=0.25, depth=2, image_size=16), (2, 3, 16, 16)),
    "gac_snn": (dict(width=0.125, steps=2, blocks=(1, 1, 1)), (2, 3, 16, 16)),
    "efficientnet_b0": (dict(width=0.25), (2, 3, 32, 32)),
    "tiny_cnn": (dict(), (2, 1, 8, 8)),
    "dncnn": (dict(width=0.25, depth=3), (2, 3, 16, 16)),
    "nafnet": (dict(width=0.25), (2, 3, 16, 16)),
    "cgnet": (dict(width=0.25), (2, 3, 16, 16)),
    "tiny_denoiser": (dict(), (2, 3, 16, 16)),
}
"""A tiny size of each model; a model registered without one fails the test below until it gets one."""


def _fusable_models() -> list[str]:
    from wconv import models
    from wconv.models.registry import fusable

    return [name for name in models.available() if fusable(name)]


@pytest.mark.parametrize("name", _fusable_models())
def test_every_model_registered_fusable_fuses_as_its_separate_trials(float64, name):
    """What ``wconv validate`` trusts (``wconv.models.registry.fusable``): the group's vmapped forward and
    backward (``wconv.fused``'s own ``functional_call`` under ``vmap``) give each member its lone model's
    outputs and gradients."""
    import copy

    from torch.func import functional_call, stack_module_state, vmap

    from wconv import models

    assert name in TINY, f"{name} is registered fusable: give it a tiny size in TINY so this test fuses it"
    options, shape = TINY[name]
    alphas = [0.6, 1.4]
    lone = []
    for alpha in alphas:
        torch.manual_seed(0)
        lone.append(models.build(name, alpha=alpha, **options).train())
    group = [copy.deepcopy(m) for m in lone]
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    expected = []
    for model in lone:
        torch.manual_seed(2)  # dropout: each lone trial draws the mask the group draws once (randomness="same")
        expected.append(model(x))
        expected[-1].square().mean().backward()

    params, buffers = stack_module_state(group)
    base = copy.deepcopy(group[0]).to("meta").train()
    torch.manual_seed(2)
    fused = vmap(lambda p, b: functional_call(base, (p, b), (x,)), randomness="same")(params, buffers)
    fused.square().mean(dim=tuple(range(1, fused.dim()))).sum().backward()
    for i, model in enumerate(lone):
        torch.testing.assert_close(fused[i], expected[i], rtol=1e-9, atol=1e-12)
        for n, p in model.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(params[n].grad[i], p.grad, rtol=1e-8, atol=1e-12, msg=f"{name}: {n}")


def test_a_fused_gac_snn_group_equals_its_separate_trials(float64, tmp_path):
    """The spiking model: its ``SpikeFunction`` has a vmap rule, so its trials fuse like any other model's."""
    tc = TrainingConfig.for_task("classification", epochs=2, batch_size=16, max_steps_per_epoch=2)
    config = TrialConfig(model="gac_snn", dataset="digits", seed=2, training=tc,
                         model_options={"width": 0.125, "steps": 2, "blocks": (1, 1, 1)},
                         dataset_options={"limit": 64})
    members = _members(config, [None, (0.6,), (1.4,)])
    alone = _alone(members, tmp_path)
    fused, results = _fused(members, tmp_path / "group")
    for a, f, r in zip(alone, fused, results):
        _assert_same_trial(a, f)
        assert r == f[-1] and r["trial_status"] == "completed"
    assert alone[1][-1]["val_loss"] != alone[2][-1]["val_loss"]  # the members really differ
