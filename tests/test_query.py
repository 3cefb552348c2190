"""best_alpha and format_table on hand-built trials in a real SQLite store."""

import csv
import io
import json

import pytest

from analysis.query import best_alpha, format_table
from analysis.store import Store


@pytest.fixture
def store(tmp_path):
    with Store(f"sqlite:///{tmp_path}/results.db") as s:
        yield s


def _trial(store, sweep, trial_id, *, alpha, model="tiny_cnn", k=3, seed=0, status="completed", baseline=False, **metrics):
    store.record_trial(
        sweep, trial_id, cell=f"{model}-k{k}-s{seed}", model=model, kernel_size=k, seed=seed,
        alpha=alpha, baseline=baseline, status=status, metrics=metrics,
    )  # fmt: skip


@pytest.fixture
def accuracy_sweep(store):
    """max mode: the stopped and running trials score higher than the best completed one."""
    store.record_sweep("acc", task="classification", metric="val_acc", mode="max", spec={})
    _trial(store, "acc", "b", alpha=[1.0], baseline=True, val_acc=0.87, val_loss=0.40)
    _trial(store, "acc", "t1", alpha=[0.8], val_acc=0.90, val_loss=0.35)
    _trial(store, "acc", "t2", alpha=[0.6], val_acc=0.88, val_loss=0.38)
    _trial(store, "acc", "t3", alpha=[0.7], status="stopped", val_acc=0.99)
    _trial(store, "acc", "t4", alpha=[0.5], status="failed", val_acc=float("nan"))
    _trial(store, "acc", "t5", alpha=[0.4], status="running", val_acc=0.995)
    _trial(store, "acc", "t6", alpha=[0.3], val_acc=float("nan"))  # completed but non-finite
    return store


def test_best_alpha_in_max_mode_is_the_highest_completed_trial(accuracy_sweep):
    (row,) = best_alpha(accuracy_sweep).to_dict("records")
    cell = (row["sweep"], row["cell"], row["model"], row["kernel_size"], row["seed"])
    assert cell == ("acc", "tiny_cnn-k3-s0", "tiny_cnn", 3, 0)
    assert (row["metric"], row["mode"]) == ("val_acc", "max")
    assert row["best_alpha"] == [0.8] and row["best_trial"] == "t1"
    assert row["best_value"] == pytest.approx(0.90) and row["other_metrics"] == {"val_loss": 0.35}
    assert row["baseline_value"] == pytest.approx(0.87)
    assert row["difference"] == pytest.approx(0.03) and row["improvement"] == pytest.approx(0.03)


def test_stopped_failed_and_running_trials_are_counted_but_never_best(accuracy_sweep):
    (row,) = best_alpha(accuracy_sweep).to_dict("records")
    assert row["best_trial"] not in ("t3", "t4", "t5", "t6")
    counts = (row["n_trials"], row["n_completed"], row["n_stopped"], row["n_failed"], row["n_running"])
    assert counts == (7, 4, 1, 1, 1)


def test_best_alpha_in_min_mode_is_the_lowest_and_improvement_is_positive_when_better(store):
    store.record_sweep("den", task="denoising", metric="val_loss", mode="min", spec={})
    _trial(store, "den", "b", alpha=[1.0, 1.0], baseline=True, val_loss=0.50)
    _trial(store, "den", "t1", alpha=[0.1, 0.9], val_loss=0.40)
    _trial(store, "den", "t2", alpha=[0.5, 0.5], val_loss=0.45)
    (row,) = best_alpha(store).to_dict("records")
    assert row["best_alpha"] == [0.1, 0.9] and row["best_value"] == pytest.approx(0.40)
    assert row["difference"] == pytest.approx(-0.10) and row["improvement"] == pytest.approx(0.10)


def test_improvement_is_negative_when_the_baseline_wins(store):
    store.record_sweep("acc", task="classification", metric="val_acc", mode="max", spec={})
    _trial(store, "acc", "b", alpha=[1.0], baseline=True, val_acc=0.95)
    _trial(store, "acc", "t1", alpha=[0.8], val_acc=0.90)
    (row,) = best_alpha(store).to_dict("records")
    assert row["best_trial"] == "t1" and row["improvement"] == pytest.approx(-0.05)


def test_unfinished_or_missing_baseline_leaves_baseline_and_differences_empty(store):
    store.record_sweep("acc", task="classification", metric="val_acc", mode="max", spec={})
    _trial(store, "acc", "b", alpha=[1.0], baseline=True, status="running", val_acc=0.99)
    _trial(store, "acc", "t1", alpha=[0.8], val_acc=0.90)
    _trial(store, "acc", "u1", k=5, alpha=[0.7], val_acc=0.91)  # a cell with no baseline trial at all
    rows = best_alpha(store).to_dict("records")
    assert [r["cell"] for r in rows] == ["tiny_cnn-k3-s0", "tiny_cnn-k5-s0"]
    for row in rows:
        assert row["best_value"] is not None
        assert row["baseline_value"] is None and row["difference"] is None and row["improvement"] is None


def test_a_cell_without_completed_search_trials_reports_no_best(store):
    store.record_sweep("acc", task="classification", metric="val_acc", mode="max", spec={})
    _trial(store, "acc", "b", alpha=[1.0], baseline=True, val_acc=0.87)
    _trial(store, "acc", "t1", alpha=[0.8], status="stopped", val_acc=0.95)
    (row,) = best_alpha(store).to_dict("records")
    assert row["best_alpha"] is None and row["best_value"] is None and row["best_trial"] is None
    assert row["baseline_value"] == pytest.approx(0.87) and row["improvement"] is None
    assert (row["n_trials"], row["n_stopped"]) == (2, 1)


def test_best_alpha_filters_by_sweep_model_and_kernel_and_orders_kernels_numerically(store):
    for sweep in ("a", "b"):
        store.record_sweep(sweep, task="classification", metric="val_acc", mode="max", spec={})
        for model in ("tiny_cnn", "tiny_unet"):
            for k in (3, 5, 11):
                _trial(store, sweep, f"{model}-{k}", model=model, k=k, alpha=[0.5], val_acc=0.5)
    assert len(best_alpha(store)) == 12
    assert [r["kernel_size"] for r in best_alpha(store, sweep="a", model="tiny_cnn").to_dict("records")] == [3, 5, 11]
    rows = best_alpha(store, sweep="b", model="tiny_unet", kernel=5).to_dict("records")
    assert [(r["sweep"], r["model"], r["kernel_size"]) for r in rows] == [("b", "tiny_unet", 5)]
    assert best_alpha(store, model="resnet").empty


def test_table_shows_alpha_as_two_decimals_or_a_pair(store):
    store.record_sweep("s", task="classification", metric="val_acc", mode="max", spec={})
    _trial(store, "s", "b3", alpha=[1.0], baseline=True, val_acc=0.85)
    _trial(store, "s", "t3", alpha=[0.8], val_acc=0.9)
    _trial(store, "s", "t5", k=5, alpha=[0.1, 0.9], val_acc=0.8)
    table = format_table(best_alpha(store))
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["sweep", "cell", "metric", "mode"] and set(lines[1]) <= {"-", " "}
    assert " 0.80 " in lines[2] and "+0.05" in lines[2]
    assert "(0.10, 0.90)" in lines[3] and " - " in lines[3]  # no baseline in the k5 cell
    assert len({len(line) for line in lines[:2]}) == 1  # fixed width


def test_json_and_csv_parse_back_to_the_same_values(accuracy_sweep):
    df = best_alpha(accuracy_sweep)
    (record,) = json.loads(format_table(df, "json"))
    assert record["best_alpha"] == [0.8] and record["other_metrics"] == {"val_loss": 0.35}
    assert record["n_trials"] == 7 and record["baseline_value"] == pytest.approx(0.87)
    assert set(record) == set(df.columns)
    (row,) = csv.DictReader(io.StringIO(format_table(df, "csv")))
    assert json.loads(row["best_alpha"]) == [0.8] and json.loads(row["other_metrics"]) == {"val_loss": 0.35}
    assert float(row["best_value"]) == pytest.approx(0.90) and int(row["n_stopped"]) == 1
    assert row["cell"] == "tiny_cnn-k3-s0"


def test_empty_results_render_in_every_format(store):
    df = best_alpha(store)
    assert json.loads(format_table(df, "json")) == []
    assert next(csv.reader(io.StringIO(format_table(df, "csv"))))[:2] == ["sweep", "cell"]
    assert "(no results)" in format_table(df)
    with pytest.raises(ValueError, match="format"):
        format_table(df, "xml")
