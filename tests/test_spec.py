"""The sweep file: shipped sweeps validate, bad ones get one line per problem and exit code 2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from launch.cli import main
from launch.spec import SpecError, load_sweep, parse_sweep

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


def _with(path: str, value):
    """GOOD with one dotted field replaced (or removed when value is ...)."""
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[int(p) if p.isdigit() and int(p) in node else p]
    key = int(last) if last.isdigit() and (isinstance(node, list) or int(last) in node) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return data


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
    assert (sweep.metric, sweep.mode) == ("val_accuracy", "max")
    cfg = sweep.training_config()
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.label_smoothing, cfg.epochs) == (
        "sgd", 0.1, 0.9, 5e-5, 0.1, 200)
    denoise = parse_sweep(dict(minimal, task="denoising", dataset={"name": "natural"}, models=["tiny_denoiser"]))
    assert (denoise.metric, denoise.mode, denoise.training_config().optimizer) == ("val_psnr", "max", "adam")


BAD = [
    ("kernels.5.1", [1.5, 0.4], "kernels.5[1]: high (0.4) must be > low (1.5)"),
    ("kernels.5", [[0.1, 1.5]], "kernels.5: needs 2 [low, high] range(s)"),
    ("kernels", {4: [[0.5, 1.5]]}, "kernels.4: kernel size must be odd"),
    ("kernels.3.0", [-0.5, 1.5], "kernels.3[0]: low (-0.5) must be > 0"),
    ("task", "segmentation", "task: Input should be 'classification' or 'denoising'"),
    ("search.metric", "val_psnr", "search.metric: 'val_psnr' is not a classification metric"),
    ("search.mode", "maximise", "search.mode"),
    ("search.num_samples", 0, "search.num_samples"),
    ("scheduler.max_epochs", 7, "scheduler.max_epochs (7) must equal training.epochs (5)"),
    ("scheduler.type", "hyperband", "scheduler.type"),
    ("training.lrr", 0.1, "training: unknown field(s) ['lrr']"),
    ("training.lr", -1, "training: lr must be a positive number"),
    ("models", ["resnet9000"], "models[0]: unknown model 'resnet9000'"),
    ("models", ["tiny_denoiser"], "models[0]: 'tiny_denoiser' is a denoising model"),
    ("dataset.name", "mnist", "dataset.name: unknown dataset 'mnist'"),
    ("dataset.name", "natural", "dataset.name: 'natural' is a denoising dataset"),
    ("name", "bad name!", "name: must be letters"),
    ("resources.gpus_per_trial", -1, "resources.gpus_per_trial"),
    ("seeds", [], "seeds"),
    ("colour", "blue", "colour: Extra inputs are not permitted"),
    ("models", ..., "models: Field required"),
]


@pytest.mark.parametrize("field,value,expected", BAD, ids=[b[0] + ":" + str(b[1])[:20] for b in BAD])
def test_bad_sweep_file_gets_one_line_naming_file_and_field(tmp_path, capsys, field, value, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with(field, value)))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(line.startswith(f"{path}: ") and expected in line for line in err), err


def test_every_problem_is_reported_at_once(tmp_path):
    data = _with("kernels.5.1", [1.5, 0.4])
    data["training"]["momentun"] = 0.9
    data["search"]["num_samples"] = -3
    with pytest.raises(SpecError) as e:
        parse_sweep(data, "x.yaml")
    assert len(e.value.problems) >= 2


@pytest.mark.parametrize("text,expected", [
    ("name: [unclosed", "not valid YAML"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("!!python/object/apply:os.system ['echo pwned']", "not valid YAML"),
])
def test_unusable_yaml_is_refused_with_safe_loader(tmp_path, capsys, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    assert expected in capsys.readouterr().err


def test_missing_file_is_a_user_error(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: cannot read the sweep file" in capsys.readouterr().err


def test_run_with_bad_file_starts_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with("kernels.5.1", [1.5, 0.4])))
    assert main(["run", str(path)]) == 2
    assert not (tmp_path / "results").exists()


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
    path.write_text(yaml.safe_dump(_with("training.epochs", 30) | {"scheduler": {"grace_period": 2,
                                                                              "reduction_factor": 3}}))
    assert main(["plan", str(path)]) == 0
    assert "ASHA compares trials at epochs 2, 6, 18 of 30" in capsys.readouterr().out
