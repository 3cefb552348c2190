"""best_alpha (per cell and per model across seeds), the confirmation verdict and format_table, on hand-built
trials in a real SQLite store."""

import csv
import io
import json

import numpy as np
import pytest
from scipy import stats

from analysis.frames import ResultsError, load
from analysis.query import best_alpha, confirmation, decomposition_line, format_table
from analysis.store import Store


@pytest.fixture
def store(tmp_path):
    with Store(f"sqlite:///{tmp_path}/results.db") as s:
        yield s


def _trial(store, sweep, trial_id, *, alpha, model="tiny_cnn", k=3, seed=0, status="completed", baseline=False,
           stage="search", arm=None, **metrics):
    store.record_trial(
        sweep, trial_id, cell=f"{model}-k{k}-s{seed}", model=model, kernel_size=k, seed=seed,
        alpha=alpha, baseline=baseline, status=status, metrics=metrics, stage=stage, arm=arm,
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
    assert row["verdict"] == "unconfirmed"


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


@pytest.mark.parametrize("fmt", ["json", "csv"])
@pytest.mark.parametrize("by", ["cell", "model"])
def test_when_no_alpha_beats_alpha_one_the_best_is_alpha_one_and_says_so(store, by, fmt):
    """The day-one report: "best α 1.05 … best 18.86 … α = 1 19.41 … improvement -0.5554" (a worse α shown as
    the best); and a tie with α = 1 broken in the density's favour. Neither is a best α."""
    store.record_sweep("worse", task="denoising", metric="val_psnr", mode="max", spec={})
    _trial(store, "worse", "b", alpha=[1.0], baseline=True, val_psnr=19.41)
    _trial(store, "worse", "t1", alpha=[1.05], val_psnr=18.86)
    _trial(store, "worse", "t2", alpha=[0.6], val_psnr=17.0)
    store.record_sweep("tie", task="classification", metric="val_acc", mode="max", spec={})
    _trial(store, "tie", "b", alpha=[1.0], baseline=True, val_acc=0.9861)
    _trial(store, "tie", "t1", alpha=[1.05], val_acc=0.9861)
    rows = {r["sweep"]: r for r in best_alpha(store, by=by).to_dict("records")}
    for sweep, tried, gain in (("worse", [1.05], -0.55), ("tie", [1.05], 0.0)):
        row = rows[sweep]
        assert row["best_alpha"] == [1.0] and row["beats_baseline"] is False, row
        assert row["best_value"] == pytest.approx(row["baseline_value"]) and row["improvement"] == pytest.approx(0)
        assert row["note"] == f"no α beat α = 1 (best tried 1.05: {gain:+.4g} against α = 1)"
    if by == "cell":
        assert rows["worse"]["best_trial"] == "b"
    text = format_table(best_alpha(store, by=by), fmt)
    parsed = json.loads(text) if fmt == "json" else list(csv.DictReader(io.StringIO(text)))
    for row in parsed:
        assert json.loads(row["best_alpha"]) == [1.0] if fmt == "csv" else row["best_alpha"] == [1.0]
        assert "no α beat α = 1" in row["note"]
    table = format_table(best_alpha(store, by=by), "table")
    assert "1.05" in table and "1.00" in table and "-0.5554" not in table


def test_an_alpha_that_beats_alpha_one_is_the_best_and_carries_no_note(store):
    store.record_sweep("acc", task="classification", metric="val_acc", mode="max", spec={})
    _trial(store, "acc", "b", alpha=[1.0], baseline=True, val_acc=0.90)
    _trial(store, "acc", "t1", alpha=[0.8], val_acc=0.9001)
    (row,) = best_alpha(store).to_dict("records")
    assert row["best_alpha"] == [0.8] and row["beats_baseline"] is True and row["note"] is None


@pytest.mark.parametrize("by", ["cell", "model"])
def test_a_sweep_with_trials_but_none_finished_does_not_break_the_others(store, by):
    """The day-one crash: one sweep interrupted (or still running) before its first trial finished made every
    `wconv best` a TypeError."""
    store.record_sweep("acc", task="classification", metric="val_acc", mode="max", spec={})
    _trial(store, "acc", "b", alpha=[1.0], baseline=True, val_acc=0.90)
    _trial(store, "acc", "t1", alpha=[0.8], val_acc=0.95)
    store.record_sweep("early", task="classification", metric="val_acc", mode="max", spec={})
    store.record_trial("early", "b", cell="tiny_cnn-k3-s0", model="tiny_cnn", kernel_size=3, seed=0, alpha=[1.0],
                       baseline=True, status="running")
    store.record_trial("early", "t1", cell="tiny_cnn-k3-s0", model="tiny_cnn", kernel_size=3, seed=0, alpha=[0.7],
                       status="running")
    rows = {r["sweep"]: r for r in best_alpha(store, by=by).to_dict("records")}
    assert rows["acc"]["best_alpha"] == [0.8]
    assert rows["early"]["best_alpha"] is None and rows["early"]["note"] == "no finished trial yet (2 running)"
    assert "no finished trial yet" in format_table(best_alpha(store, sweep="early", by=by))


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
    (model_row,) = best_alpha(store, by="model").to_dict("records")
    assert model_row["best_alpha"] is None and model_row["verdict"] == "unconfirmed"


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


def test_an_unknown_sweep_model_or_kernel_is_one_line_listing_what_exists(accuracy_sweep):
    with pytest.raises(ResultsError, match=r"^no sweep 'ac' in .*; sweeps: acc$"):
        best_alpha(accuracy_sweep, sweep="ac")
    with pytest.raises(ResultsError, match=r"^no model 'resnet' in sweep 'acc'; models: tiny_cnn$"):
        best_alpha(accuracy_sweep, sweep="acc", model="resnet")
    with pytest.raises(ResultsError, match=r"^no kernel size 5 in sweep 'acc' model 'tiny_cnn'; kernel sizes: 3$"):
        best_alpha(accuracy_sweep, sweep="acc", model="tiny_cnn", kernel=5, by="model")


def test_a_database_with_only_a_sweep_row_gives_empty_answers(store):
    store.record_sweep("acc", task="classification", metric="val_acc", mode="max", spec={})
    assert best_alpha(store).empty and best_alpha(store, by="model").empty
    with pytest.raises(ResultsError, match="no model 'tiny_cnn' in sweep 'acc'; there are no models yet"):
        best_alpha(store, sweep="acc", model="tiny_cnn")


# ---------------------------------------------------------------- several seeds

SEEDS = (0, 1, 2)
# val_acc per seed: α = 1, α = 0.8 (wins on seed 0 only, by a lot), α = 1.2 (wins on every seed, a little).
BASE = (0.80, 0.85, 0.90)
LUCKY = (0.90, 0.80, 0.85)
STEADY = (0.82, 0.86, 0.92)


@pytest.fixture
def seeded_sweep(store):
    store.record_sweep("acc", task="classification", metric="val_acc", mode="max", spec={})
    for seed, base, lucky, steady in zip(SEEDS, BASE, LUCKY, STEADY):
        _trial(store, "acc", f"s{seed}/1.0", seed=seed, alpha=[1.0], baseline=True, val_acc=base)
        _trial(store, "acc", f"s{seed}/0.8", seed=seed, alpha=[0.8], val_acc=lucky)
        _trial(store, "acc", f"s{seed}/1.2", seed=seed, alpha=[1.2], val_acc=steady)
    _trial(store, "acc", "s0/0.6", seed=0, alpha=[0.6], val_acc=0.99)  # one lucky seed only
    return store


def test_by_cell_picks_each_seeds_own_winner(seeded_sweep):
    rows = best_alpha(seeded_sweep, by="cell").to_dict("records")
    assert [r["best_alpha"] for r in rows] == [[0.6], [1.2], [1.2]]


def test_by_model_picks_the_alpha_with_the_best_mean_paired_difference_over_the_seeds_it_ran_on(seeded_sweep):
    (row,) = best_alpha(seeded_sweep, by="model").to_dict("records")
    # α = 0.6 ran on one seed only, so it does not compete with the α values seen on all three.
    assert row["best_alpha"] == [1.2] and row["n_seeds"] == 3 and row["seeds"] == [0, 1, 2]
    differences = np.subtract(STEADY, BASE)
    assert row["best_value"] == pytest.approx(np.mean(STEADY)) and row["baseline_value"] == pytest.approx(np.mean(BASE))
    assert row["difference"] == pytest.approx(differences.mean()) and row["improvement"] == row["difference"]
    # With 3 seeds the 95 % percentile-bootstrap CI of the mean is [min d, max d] (see analysis.stats).
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((differences.min(), differences.max()))
    assert row["best_trials"] == ["s0/1.2", "s1/1.2", "s2/1.2"] and row["verdict"] == "unconfirmed"


def test_by_model_with_one_seed_is_the_per_cell_answer(accuracy_sweep):
    (cell,) = best_alpha(accuracy_sweep, by="cell").to_dict("records")
    (model,) = best_alpha(accuracy_sweep, by="model").to_dict("records")
    assert model["best_alpha"] == cell["best_alpha"] and model["best_trials"] == [cell["best_trial"]]
    assert model["best_value"] == cell["best_value"] and model["difference"] == cell["difference"]
    assert model["ci_low"] is None and model["n_seeds"] == 1


# ---------------------------------------------------------------- confirmation

CONFIRM_SEEDS = (100, 101, 102, 103)
CONFIRM_BASE = (0.81, 0.84, 0.86, 0.83)
CONFIRM_ALPHA = (0.84, 0.86, 0.90, 0.85)
CONFIRM_CONTROL = (0.82, 0.85, 0.88, 0.83)


def _confirm(store, values_by_arm, alpha=(1.2,), metric="test_acc"):
    for arm, values in values_by_arm.items():
        for seed, value in zip(CONFIRM_SEEDS, values):
            a = list(alpha) if arm == "alpha" else [1.0]
            _trial(store, "acc", f"confirm/{arm}/s{seed}", seed=seed, alpha=a, baseline=arm == "baseline",
                   stage="confirm", arm=arm, **{metric: value, "val_acc": 0.5})


def test_confirmation_compares_the_arms_seed_by_seed_on_the_test_metric(seeded_sweep):
    _confirm(seeded_sweep, {"alpha": CONFIRM_ALPHA, "baseline": CONFIRM_BASE, "init-scale": CONFIRM_CONTROL})
    c = confirmation(load(seeded_sweep), "acc", "tiny_cnn", 3)
    assert list(c.controls) == ["init-scale"]
    assert c.metric == "test_acc" and c.alpha == [1.2] and c.seeds == list(CONFIRM_SEEDS)
    cmp = c.comparison
    assert cmp.difference == pytest.approx(np.mean(np.subtract(CONFIRM_ALPHA, CONFIRM_BASE)))
    assert cmp.p_value == pytest.approx(stats.ttest_rel(CONFIRM_ALPHA, CONFIRM_BASE).pvalue)
    assert cmp.verdict == "confirmed"
    gain = np.mean(np.subtract(CONFIRM_ALPHA, CONFIRM_BASE))
    assert c.controls["init-scale"].explained == pytest.approx(np.mean(np.subtract(CONFIRM_CONTROL, CONFIRM_BASE))
                                                              / gain)
    (row,) = best_alpha(seeded_sweep, by="model").to_dict("records")
    assert row["verdict"] == "confirmed" and row["confirm_seeds"] == list(CONFIRM_SEEDS)
    assert row["confirm_difference"] == pytest.approx(cmp.difference) and row["confirm_p"] == cmp.p_value
    assert all(r["verdict"] == "confirmed" for r in best_alpha(seeded_sweep, by="cell").to_dict("records"))


def test_confirmation_on_fewer_than_two_finished_seeds_stays_unconfirmed(seeded_sweep):
    _confirm(seeded_sweep, {"alpha": CONFIRM_ALPHA[:1], "baseline": CONFIRM_BASE[:1]})
    _trial(seeded_sweep, "acc", "confirm/alpha/s101", seed=101, alpha=[1.2], stage="confirm", arm="alpha",
           status="running")
    c = confirmation(load(seeded_sweep), "acc", "tiny_cnn", 3)
    assert c.comparison is None and c.verdict == "unconfirmed" and c.planned_seeds == 2 and c.seeds == [100]
    (row,) = best_alpha(seeded_sweep, by="model").to_dict("records")
    assert row["verdict"] == "unconfirmed" and row["confirm_alpha"] == [1.2]


def test_confirmation_that_loses_is_worse(seeded_sweep):
    _confirm(seeded_sweep, {"alpha": CONFIRM_BASE, "baseline": CONFIRM_ALPHA})
    assert confirmation(load(seeded_sweep), "acc", "tiny_cnn", 3).verdict == "worse"


def test_search_trials_never_count_as_confirmation_and_confirmation_never_as_search(seeded_sweep):
    before = best_alpha(seeded_sweep, by="model")
    _confirm(seeded_sweep, {"alpha": (0.99,) * 4, "baseline": (0.1,) * 4}, metric="val_acc")
    after = best_alpha(seeded_sweep, by="model")
    assert after.loc[0, "best_value"] == before.loc[0, "best_value"] and after.loc[0, "seeds"] == [0, 1, 2]
    assert confirmation(load(seeded_sweep), "acc", "tiny_cnn", 5) is None


# ---------------------------------------------------------------- rendering


def test_table_shows_alpha_as_two_decimals_or_a_pair(store):
    store.record_sweep("s", task="classification", metric="val_acc", mode="max", spec={})
    _trial(store, "s", "b3", alpha=[1.0], baseline=True, val_acc=0.85)
    _trial(store, "s", "t3", alpha=[0.8], val_acc=0.9)
    _trial(store, "s", "t5", k=5, alpha=[0.1, 0.9], val_acc=0.8)
    lines = format_table(best_alpha(store)).splitlines()
    assert lines[0].split()[:4] == ["sweep", "cell", "metric", "best"] and set(lines[1]) <= {"-", " "}
    assert " 0.80 " in lines[2] and "+0.05" in lines[2]
    assert "(0.10, 0.90)" in lines[3] and " - " in lines[3]  # no baseline in the k5 cell
    assert lines[2].index(" 0.80 ") == lines[3].index(" (0.10, 0.90) ") == lines[0].index(" best α")  # aligned


def test_model_table_shows_the_search_ci_and_the_verdict(seeded_sweep):
    _confirm(seeded_sweep, {"alpha": CONFIRM_ALPHA, "baseline": CONFIRM_BASE})
    header, rule, row, blank, line = format_table(best_alpha(seeded_sweep, by="model")).splitlines()
    assert "95% CI (search)" in header and "verdict" in header and "p (paired t)" in header
    assert " 1.20 " in row and " confirmed " in row and "[+0.01, +0.02]" in row
    assert "share" not in header  # no control ran
    assert blank == "" and line.startswith("tiny_cnn 3×3: gain +0.0") and line.endswith(", confirmed")


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


def test_a_tie_goes_to_the_smaller_alpha_in_both_views(store):
    store.record_sweep("acc", task="classification", metric="val_acc", mode="max", spec={})
    for seed in (0, 1):
        _trial(store, "acc", f"s{seed}/1.0", seed=seed, alpha=[1.0], baseline=True, val_acc=0.80)
        _trial(store, "acc", f"s{seed}/1.3", seed=seed, alpha=[1.3], val_acc=0.85)
        _trial(store, "acc", f"s{seed}/0.7", seed=seed, alpha=[0.7], val_acc=0.85)
    assert [r["best_alpha"] for r in best_alpha(store, by="cell").to_dict("records")] == [[0.7], [0.7]]
    assert best_alpha(store, by="model").loc[0, "best_alpha"] == [0.7]


CONFIRM_SHAPE = (0.835, 0.855, 0.895, 0.845)
CONFIRM_LR = (0.81, 0.845, 0.86, 0.835)


def test_each_control_gets_its_paired_comparison_share_and_one_verdict_line(seeded_sweep):
    _confirm(seeded_sweep, {"alpha": CONFIRM_ALPHA, "baseline": CONFIRM_BASE, "init-scale": CONFIRM_CONTROL,
                            "init-shape": CONFIRM_SHAPE, "lr-shape": CONFIRM_LR})
    c = confirmation(load(seeded_sweep), "acc", "tiny_cnn", 3)
    assert list(c.controls) == ["init-scale", "init-shape", "lr-shape"]  # CONTROLS order, whatever the store's
    gain = np.mean(np.subtract(CONFIRM_ALPHA, CONFIRM_BASE))
    for arm, values in (("init-scale", CONFIRM_CONTROL), ("init-shape", CONFIRM_SHAPE), ("lr-shape", CONFIRM_LR)):
        share = c.controls[arm]
        assert share.explained == pytest.approx(np.mean(np.subtract(values, CONFIRM_BASE)) / gain)
        assert share.versus_baseline.p_value == pytest.approx(stats.ttest_rel(values, CONFIRM_BASE).pvalue)
    shares = {arm: f"{c.controls[arm].explained:.2f}" for arm in c.controls}
    line = decomposition_line(c)
    cmp = c.comparison
    assert line.startswith(f"gain {cmp.improvement:+.3g} [{cmp.ci_low:+.3g}, {cmp.ci_high:+.3g}], confirmed; "
                           f"init-scale reproduces {shares['init-scale']} of it (")
    assert f", init-shape {shares['init-shape']} (" in line and f", lr-shape {shares['lr-shape']} (" in line
    (row,) = best_alpha(seeded_sweep, by="model").to_dict("records")
    assert row["decomposition"] == line and row["init_shape_explained"] == c.controls["init-shape"].explained
    assert row["controls"]["lr-shape"]["p"] == c.controls["lr-shape"].versus_baseline.p_value
    table = format_table(best_alpha(seeded_sweep, by="model"), "table")
    assert "init-shape share" in table and f"{c.controls['init-shape'].explained:.2f}" in table
    assert f"tiny_cnn 3×3: {line}" in table


def test_a_confirmation_without_controls_reads_as_its_gain_alone_and_a_loss_gets_no_share(seeded_sweep):
    _confirm(seeded_sweep, {"alpha": CONFIRM_BASE, "baseline": CONFIRM_ALPHA, "init-shape": CONFIRM_SHAPE})
    c = confirmation(load(seeded_sweep), "acc", "tiny_cnn", 3)
    line = decomposition_line(c)
    assert line.startswith(f"gain {c.comparison.improvement:+.3g} [") and ", worse; no gain for a control" in line
    assert "init-shape: " in line and "reproduces" not in line
    table = format_table(best_alpha(seeded_sweep, by="model"), "table")
    assert "lr-shape share" not in table  # a control that did not run gets no column


def test_decomposition_line_before_two_paired_seeds_is_none(seeded_sweep):
    _confirm(seeded_sweep, {"alpha": CONFIRM_ALPHA[:1], "baseline": CONFIRM_BASE[:1]})
    assert decomposition_line(confirmation(load(seeded_sweep), "acc", "tiny_cnn", 3)) is None
    assert decomposition_line(None) is None


def test_decomposition_line_in_min_mode_reads_improvements_and_their_ci_in_order():
    import pandas as pd

    from analysis.query import Confirmation
    from analysis.stats import compare_paired, control_share

    # NRMSE, lower is better: α lowers it by 0.025, init-shape by 0.035 / 3; share 0.0117 / 0.025 = 0.47
    alpha, base, shape = [0.08, 0.085, 0.09], [0.10, 0.11, 0.12], [0.09, 0.095, 0.11]
    cmp = compare_paired(alpha, base, "min")
    c = Confirmation("s", "m", 3, [0.8], "test_nrmse", "min", pd.DataFrame(), 3, cmp,
                     {"init-shape": control_share(alpha, base, shape, "min")})
    line = decomposition_line(c)
    low, high = -cmp.ci_high, -cmp.ci_low
    assert low <= high and line.startswith(f"gain {cmp.improvement:+.3g} [{low:+.3g}, {high:+.3g}], ")
    assert cmp.improvement > 0 and "init-shape reproduces 0.47 of it (+0.0117 against α = 1" in line
