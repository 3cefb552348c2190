"""The sweep file: shipped sweeps validate; every field is strictly typed (``training`` from the
``TrainingConfig`` dataclass itself); options are checked against the registries; ``--set`` edits the raw
mapping. What the CLI answers to bad input is catalogued in tests/test_bad_input.py."""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
import typing
from pathlib import Path

import pytest
import yaml

from launch.cli import main
from launch.spec import SpecError, Sweep, TrainingOverrides, apply_overrides, load_sweep, parse_sweep
from wconv.train import TrainingConfig

ROOT = Path(__file__).resolve().parents[1]

GOOD = {
    "name": "t",
    "task": "classification",
    "dataset": {"name": "digits"},
    "models": ["tiny_cnn"],
    "kernels": {3: [[0.5, 1.5]], 5: [[0.05, 1.5], [0.5, 1.5]]},
    "search": {"num_samples": 4, "metric": "val_accuracy", "mode": "max", "seed": 0},
    "scheduler": {"type": "asha", "max_epochs": 5, "grace_period": 1, "reduction_factor": 3},
    "training": {"epochs": 5, "batch_size": 32, "lr": 0.1},
    "seeds": [0, 1],
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    "storage": "sqlite:///results/wconv.db",
}


def as_yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("...\n").strip()


def good(**changes) -> dict:
    """A fresh copy of GOOD with dotted fields replaced, as ``--set`` would."""
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    return apply_overrides(data, [f"{k}={as_yaml(v)}" for k, v in changes.items()])


def problems(data) -> list[str]:
    with pytest.raises(SpecError) as e:
        parse_sweep(data, "s.yaml")
    return e.value.problems


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweeps_validate(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


def test_cells_are_model_by_kernel_by_seed():
    sweep = parse_sweep(GOOD)
    ids = [c.id for c in sweep.cells()]
    assert ids == ["tiny_cnn-k3-s0", "tiny_cnn-k3-s1", "tiny_cnn-k5-s0", "tiny_cnn-k5-s1"]
    assert sweep.cells()[2].ranges == ((0.05, 1.5), (0.5, 1.5))


def test_defaults_fill_what_the_file_omits():
    minimal = {k: GOOD[k] for k in ("name", "task", "dataset", "models", "kernels")}
    sweep = parse_sweep(minimal)
    assert (sweep.metric, sweep.mode, sweep.workers) == ("val_accuracy", "max", 1)
    cfg = sweep.training_config()
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.label_smoothing, cfg.epochs) == (
        "sgd", 0.1, 0.9, 5e-5, 0.1, 200)
    denoise = parse_sweep(dict(minimal, task="denoising", dataset={"name": "natural"}, models=["tiny_denoiser"]))
    assert (denoise.metric, denoise.mode, denoise.training_config().optimizer) == ("val_psnr", "max", "adam")


def test_every_problem_is_reported_at_once():
    data = good(**{"kernels.5.1": [1.5, 0.4], "training.momentun": 0.9, "search.num_samples": -3})
    found = problems(data)
    assert any(p.startswith("training.momentun: unknown field") for p in found), found
    assert any(p.startswith("search.num_samples: ") for p in found), found


# -- training: typed from the dataclass -------------------------------------------------------------


def _numeric(tp) -> bool:
    return tp in (int, float) or any(_numeric(a) for a in typing.get_args(tp))


TRAINING_HINTS = typing.get_type_hints(TrainingConfig)
NUMERIC_TRAINING = [f.name for f in dataclasses.fields(TrainingConfig) if _numeric(TRAINING_HINTS[f.name])]


def test_training_model_has_exactly_the_dataclass_fields():
    assert list(TrainingOverrides.model_fields) == TrainingConfig.field_names()


@pytest.mark.parametrize("field", TrainingConfig.field_names())
def test_every_training_field_refuses_a_value_of_the_wrong_type(field):
    found = problems(good(**{f"training.{field}": {"a": "mapping"}}))
    assert len(found) == 1 and found[0].startswith(f"training.{field}"), found


@pytest.mark.parametrize("field", NUMERIC_TRAINING)
@pytest.mark.parametrize("bad", [True, math.nan, math.inf, -math.inf, "1"], ids=["bool", "nan", "inf", "-inf", "str"])
def test_numeric_training_fields_refuse_bools_nan_inf_and_text(field, bad):
    value = [bad, 0.9] if typing.get_origin(TRAINING_HINTS[field]) is tuple else bad
    data = good()
    data["training"][field] = value
    found = problems(data)
    assert len(found) == 1 and found[0].startswith(f"training.{field}"), found


def test_every_default_of_the_dataclass_is_accepted_as_yaml_gives_it():
    for task, dataset, model in (("classification", "digits", "tiny_cnn"), ("denoising", "natural", "tiny_denoiser")):
        defaults = json.loads(json.dumps(dataclasses.asdict(TrainingConfig.for_task(task))))  # tuples → lists
        sweep = parse_sweep(dict(GOOD, task=task, dataset={"name": dataset}, models=[model], search={},
                                 scheduler={}, training=defaults))
        assert sweep.training_config() == TrainingConfig.for_task(task).validating(task, sweep.metric)


@pytest.mark.parametrize("field, value, expected", [
    ("optimizer", "rmsprop", "training.optimizer: Input should be 'sgd' or 'adam', got 'rmsprop'"),
    ("epochs", 0, "training.epochs: Input should be greater than or equal to 1, got 0"),
    ("betas", [0.9, 1.0], "training.betas[1]: Input should be less than 1, got 1.0"),
    ("momentum", -0.1, "training.momentum: Input should be greater than or equal to 0"),
    ("patience", 0, "training.patience: Input should be greater than or equal to 1"),
    ("val_metrics", ["psnr"], "training.val_metrics: 'psnr' not classification metric(s)"),
    ("val_metrics", ["iou"], "training.val_metrics[0]: Input should be 'accuracy'"),
])
def test_training_values_out_of_range_name_the_field(field, value, expected):
    found = problems(good(**{f"training.{field}": value}))
    assert len(found) == 1 and found[0].startswith(expected), found


def test_recorded_spec_keeps_only_the_training_fields_the_file_gives():
    spec = parse_sweep(good(**{"training.betas": [0.8, 0.9]})).model_dump(mode="json")
    assert spec["training"] == dict(GOOD["training"], betas=[0.8, 0.9])


@pytest.mark.parametrize("task, metric, given, scored", [
    ("classification", None, None, {"accuracy", "f1"}),
    ("classification", "val_f1", ["accuracy"], {"accuracy", "f1"}),
    ("denoising", "val_uiq", None, {"psnr", "ssim", "nrmse", "uiq"}),
    ("denoising", "val_fsim", ["psnr"], {"psnr", "fsim"}),
    ("denoising", "val_loss", ["ssim"], {"ssim"}),
])
def test_the_search_metric_is_validated_every_epoch(task, metric, given, scored):
    data = dict(GOOD, task=task, search={"metric": metric}, scheduler={}, training={"epochs": 3})
    if task == "denoising":
        data.update(dataset={"name": "natural"}, models=["tiny_denoiser"])
    if given is not None:
        data["training"]["val_metrics"] = given
    assert set(parse_sweep(data).training_config().val_metrics) == scored


# -- every other field -------------------------------------------------------------------------------


SWEEP_NUMBERS = ["search.num_samples", "search.seed", "search.max_concurrent", "scheduler.max_epochs",
                 "scheduler.grace_period", "scheduler.reduction_factor", "resources.cpus_per_trial",
                 "resources.gpus_per_trial", "workers", "seeds.0", "kernels.3.0.0", "kernels.5.1.1"]


@pytest.mark.parametrize("path", SWEEP_NUMBERS)
@pytest.mark.parametrize("bad", [True, math.nan, math.inf, "2"], ids=["bool", "nan", "inf", "str"])
def test_sweep_numbers_refuse_bools_nan_inf_and_text(path, bad):
    found = problems(good(**{path: bad}))
    parts = path.split(".")
    shown = f"kernels.{parts[1]}[{parts[2]}][{parts[3]}]" if parts[0] == "kernels" else path.replace(".0", "[0]")
    assert len(found) == 1 and found[0].startswith(shown + ": "), found


@pytest.mark.parametrize("name", [".", "..", "a/b", "", "x" * 101, "résumé"])
def test_names_that_cannot_name_a_folder_are_refused(name):
    assert problems(good(name=name))[0].startswith("name: ")


def test_workers_share_a_cell_up_to_one_per_sampled_trial():
    assert parse_sweep(good(workers=4)).workers == 4
    assert problems(good(workers=5)) == ["workers (5) must be ≤ search.num_samples (4): a worker with no trial "
                                         "to run would only wait; lower it"]
    assert problems(good(workers=0))[0].startswith("workers: Input should be greater than or equal to 1")
    assert "SLURM array tasks" in Sweep.model_fields["workers"].description


def test_a_model_listed_twice_or_a_repeated_seed_is_refused():
    assert problems(good(models=["tiny_cnn", {"name": "tiny_cnn", "options": {"width": 0.5}}]))[0].startswith(
        "models[1]: 'tiny_cnn' is already models[0]")
    assert problems(good(seeds=[0, 3, 0]))[0].startswith("seeds[2]: seed 0 is listed twice")


# -- options: what the registries accept ----------------------------------------------------------


@pytest.mark.parametrize("options, expected", [
    ({"widht": 2}, "models[0].options.widht: unknown option; expected one of ['channels', 'width']"),
    ({"in_channels": 3}, "models[0].options.in_channels: unknown option"),
    ({"width": "wide"}, "models[0].options.width: Input should be a valid number, got 'wide'"),
    ({"width": True}, "models[0].options.width: Input should be a valid number, got True"),
    ({"width": math.nan}, "models[0].options.width: Input should be a finite number"),
    ({"channels": 2.5}, "models[0].options.channels: Input should be a valid integer, got 2.5"),
    ({"width": -1.0}, "models[0].options: build('tiny_cnn'): width must be > 0, got -1.0"),
])
def test_model_options_are_checked_against_the_registry(options, expected):
    found = problems(good(models=[{"name": "tiny_cnn", "options": options}]))
    assert len(found) == 1 and found[0].startswith(expected), found


def test_model_option_values_are_checked_by_building_on_the_meta_device():
    data = dict(good(models=[{"name": "resnet56", "options": {"depth": 7}}]), dataset={"name": "digits"})
    found = problems(data)
    assert found == ["models[0].options: resnet56: depth must be 6n+2 ≥ 8 (20, 32, 44, 56, 110, …), got 7; "
                     "change the options"]


@pytest.mark.parametrize("options, expected", [
    ({"noise_sigma": 0.1}, "dataset.options.noise_sigma: the trial sets it from training.noise_sigma; "
                           "set training.noise_sigma instead"),
    ({"patch_size": 32}, "dataset.options.patch_size: unknown option; expected one of"),
    ({"limit": True}, "dataset.options.limit: Input should be a valid integer, got True"),
    ({"limit": 0}, "dataset.options: limit must be a positive int or None, got 0"),
    ({"val_fraction": 1.5}, "dataset.options: val_fraction must be in (0, 1), got 1.5"),
])
def test_dataset_options_are_checked_against_the_registry(options, expected):
    found = problems(good(**{"dataset.options": options}))
    assert len(found) == 1 and found[0].startswith(expected), found


def test_accepted_options_reach_the_cells_and_the_dataset():
    sweep = parse_sweep(good(**{"models.*.options.width": 0.5, "dataset.options.limit": 40}))
    assert {c.model_options["width"] for c in sweep.cells()} == {0.5}
    assert sweep.dataset.options == {"limit": 40}


# -- --set and the file ----------------------------------------------------------------------------


def test_set_reads_values_as_yaml_and_paths_as_the_file_would():
    data = apply_overrides(good(), ["kernels.7=[[0.1, 1], [0.2, 1], [0.5, 1.5]]", "training.lr=1e-3",
                                    "models.*.options.width=0.25", "dataset.options.limit=10"])
    sweep = parse_sweep(data)
    assert sorted(sweep.kernels) == [3, 5, 7]
    assert sweep.training_config().lr == 0.001
    assert sweep.models[0].options == {"width": 0.25} and sweep.dataset.options == {"limit": 10}


@pytest.mark.parametrize("item, expected", [
    ("a..b=1", "--set 'a..b=1': 'a..b' has an empty name between dots"),
    ("=3", "--set '=3': expected FIELD=VALUE"),
    ("training.epochs", "--set 'training.epochs': expected FIELD=VALUE"),
    ("models.x.name=y", "--set models.x.name: models is a list; 'x' is not an index"),
    ("models.-1.name=y", "--set models.-1.name: models is a list; '-1' is not an index"),
    ("models.3.name=y", "--set models.3.name: models has 1 element(s); index 3 is out of range"),
    ("kernels.3.0.0.0=1", "--set kernels.3.0.0.0: kernels.3.0.0 is a float, not a mapping or list"),
    ("name.first=x", "--set name.first: name is a str, not a mapping or list"),
    ("training.epochs=[1", "--set training.epochs: value '[1' is not valid YAML"),
])
def test_malformed_set_is_one_problem_naming_it(item, expected):
    with pytest.raises(SpecError) as e:
        apply_overrides(good(), [item], "s.yaml")
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith(expected), e.value.problems


def test_yaml_reads_exponents_as_numbers_and_refuses_a_repeated_key(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(good()) + "workers: 1\n" + "workers: 2\n")
    with pytest.raises(SpecError, match="line .*: not valid YAML \\(key 'workers' appears twice; keep one\\)"):
        load_sweep(path)
    path.write_text(yaml.safe_dump(good()).replace("lr: 0.1", "lr: 1e-3"))
    assert load_sweep(path).training_config().lr == 0.001


# -- plan ------------------------------------------------------------------------------------------


def test_plan_shows_cells_trials_and_budget(capsys):
    assert main(["plan", str(ROOT / "sweeps" / "smoke.yaml")]) == 0
    out = capsys.readouterr().out
    sweep = load_sweep(ROOT / "sweeps" / "smoke.yaml")
    trials = sweep.search.num_samples + 1
    assert "tiny_cnn-k3-s0" in out
    assert f"{trials * sweep.training_config().epochs}" in out
    assert textwrap.dedent("total:") in out


def test_plan_names_the_asha_rungs(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(good(**{"training.epochs": 30, "scheduler": {"grace_period": 2,
                                                                                "reduction_factor": 3}})))
    assert main(["plan", str(path)]) == 0
    assert "ASHA compares trials at epochs 2, 6, 18 of 30" in capsys.readouterr().out


# -- samplers and fused groups ---------------------------------------------------------------------


def test_group_size_defaults_to_one_and_is_set_like_any_field(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert load_sweep(path).resources.group_size == 1
    assert load_sweep(path, ["resources.group_size=8"]).resources.group_size == 8
    assert load_sweep(path).search.sampler == "tpe"
    grid = load_sweep(path, ["kernels={5: [[0.5, 1.5], [0.5, 1.5]]}", "search.sampler=grid", "search.grid_points=5",
                             "search.num_samples=24"])
    assert (grid.search.sampler, grid.search.grid_points, grid.search.num_samples) == ("grid", 5, 24)


def test_a_model_that_cannot_be_fused_is_refused_with_groups_only(tmp_path, monkeypatch, capsys):
    """A model registered ``fusable=False`` (every shipped one fuses: tests/test_fused.py) is refused by
    ``wconv validate`` in one line naming the model and the field, when and only when groups are asked for."""
    from wconv import models  # noqa: F401  (registers the models)
    from wconv.models import registry

    monkeypatch.setitem(registry._MODELS, "tiny_cnn", dataclasses.replace(registry._MODELS["tiny_cnn"], fusable=False))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert load_sweep(path).resources.group_size == 1
    assert main(["validate", str(path), "--set", "resources.group_size=4"]) == 2
    err = capsys.readouterr().err
    assert err == (f"{path}: models[0]: 'tiny_cnn' cannot be fused (wconv.fused cannot vmap it), but "
                   "resources.group_size is 4; set resources.group_size: 1 or run this model in a sweep of its own\n")


def test_a_tpe_sweep_keeps_the_identity_it_was_recorded_with_before_samplers_were_a_field():
    from launch.cell import spec_hash

    sweep = parse_sweep(GOOD)
    recorded_before = json.loads(json.dumps(sweep.model_dump(mode="json")))
    assert "sampler" not in recorded_before["search"] and "grid_points" not in recorded_before["search"]
    random = parse_sweep({**GOOD, "search": {**GOOD["search"], "sampler": "random"}}).model_dump(mode="json")
    assert random["search"]["sampler"] == "random" and spec_hash(random) != spec_hash(recorded_before)
