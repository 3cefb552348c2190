"""`wconv report` and `wconv best --by model` on the database the real smoke sweeps wrote: the tables hold the
database's numbers (read back here with sqlite3, not through analysis/), the confirmation's statistics equal
scipy's, the report folder keeps what is not wconv's, and bad input is one line with exit code 2."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sweep_db import CLASSIFICATION, CONFIRMATION, DENOISING, smoke_db, with_confirmation  # noqa: F401  (fixture)

from analysis.store import Store
from launch.cli import main
from wconv.metrics import METRIC_MODES


def _report(db: Path, sweep: str, out: Path, capsys) -> tuple[int, str, str]:
    rc = main(["report", sweep, "--storage", f"sqlite:///{db}", "--out", str(out)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _rows(db: Path, sweep: str, stage: str = "search") -> list[dict]:
    """Every trial of ``sweep`` straight from SQLite, metrics parsed: the independent reading of the database."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM trials WHERE sweep = ? AND stage = ?", (sweep, stage)).fetchall()
    return [dict(r, metrics=json.loads(r["metrics"] or "{}"), alpha=json.loads(r["alpha"])) for r in rows]


def _csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _best_trial(rows: list[dict], metric: str) -> dict:
    """The completed non-baseline trial with the best value; a tie goes to the smaller α."""
    candidates = [r for r in rows if r["status"] == "completed" and not r["baseline"] and metric in r["metrics"]]
    sign = 1 if METRIC_MODES[metric.split("_", 1)[1]] == "max" else -1
    return min(candidates, key=lambda r: (-sign * r["metrics"][metric], r["alpha"]))


@pytest.fixture(scope="module")
def confirmed_db(smoke_db, tmp_path_factory) -> tuple[Path, dict]:  # noqa: F811
    """The smoke database plus a confirmation with known values (``sweep_db.with_confirmation``)."""
    return with_confirmation(smoke_db, tmp_path_factory.mktemp("confirmed") / "results.db"), CONFIRMATION


@pytest.fixture(scope="module")
def classification_report(confirmed_db, tmp_path_factory) -> Path:
    db, _ = confirmed_db
    out = tmp_path_factory.mktemp("report") / "smoke"
    assert main(["report", CLASSIFICATION, "--storage", f"sqlite:///{db}", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def denoising_report(smoke_db, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("report") / "denoise"
    assert main(["report", DENOISING, "--storage", f"sqlite:///{smoke_db}", "--out", str(out)]) == 0
    return out


def test_report_writes_tables_figures_index_and_manifest(classification_report):
    out = classification_report
    names = {"table3_classification", "table4_time", "confirmation"}
    for name in names:
        for suffix in (".md", ".csv", ".tex"):
            assert (out / f"{name}{suffix}").stat().st_size > 0
    figures = {p.name for p in (out / "figures").iterdir()}
    assert figures == {"alpha_tiny_cnn_k3.png", "curves_tiny_cnn_k3.png", "asha_tiny_cnn_k3.png",
                       "confusion_tiny_cnn_k3.png", "confirm_tiny_cnn_k3.png", "arms_tiny_cnn_k3.png"}
    for png in (out / "figures").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "wconv-report.json").read_text())
    assert set(manifest["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*")
                                      if p.is_file() and p.name != "wconv-report.json"}
    html = (out / "index.html").read_text()
    assert all(f"figures/{f}" in html for f in figures) and "http" not in html.replace("http-equiv", "")
    # one line per confirmed (model, kernel): the gain and what each control reproduces; when the identity holds
    assert "Where the gain comes from" in html and "<b>tiny_cnn 3×3</b>: gain +" in html
    assert "init-shape 0.83 (" in html and "Under SGD, init-shape and lr-shape together are the weighted" in html


def test_table3_holds_the_databases_numbers(classification_report, confirmed_db):
    """The classification smoke sweep trains fused (``group_size: 4`` in sweeps/smoke.yaml): its report reads the
    members as it reads lone trials."""
    db, _ = confirmed_db
    rows = _rows(db, CLASSIFICATION)
    assert {r["group_id"] is not None for r in rows} == {True} and {r["member"] for r in rows} >= {0, 1}
    best = _best_trial(rows, "val_accuracy")
    (baseline,) = [r for r in rows if r["baseline"] and r["status"] == "completed"]
    standard, weighted = _csv(classification_report / "table3_classification.csv")
    assert (standard["convolution"], weighted["convolution"]) == ("standard", "weighted")
    for row, trial in ((standard, baseline), (weighted, best)):
        assert float(row["test_accuracy"]) == trial["metrics"]["test_accuracy"]
        assert float(row["test_f1"]) == trial["metrics"]["test_f1"]
    markdown = (classification_report / "table3_classification.md").read_text()
    for trial in (baseline, best):
        assert f"{100 * trial['metrics']['test_accuracy']:.2f}%" in markdown
        assert f"{trial['metrics']['test_f1']:.3f}" in markdown
    better = max((baseline, best), key=lambda t: t["metrics"]["test_accuracy"])
    assert f"**{100 * better['metrics']['test_accuracy']:.2f}%**" in markdown
    latex = (classification_report / "table3_classification.tex").read_text()
    assert rf"\bfseries {100 * better['metrics']['test_accuracy']:.2f}\%" in latex and r"\begin{tabular}" in latex


def test_confirmation_statistics_equal_scipys(classification_report, confirmed_db):
    _, values = confirmed_db
    (row,) = _csv(classification_report / "confirmation.csv")
    a, b, c = (np.array(values[arm]) for arm in ("alpha", "baseline", "init-scale"))
    assert row["metric"] == "test_accuracy" and int(row["seeds"]) == 3
    assert float(row["alpha_mean"]) == pytest.approx(a.mean()) and float(row["alpha_std"]) == pytest.approx(a.std(ddof=1))
    assert float(row["difference"]) == pytest.approx((a - b).mean())
    assert float(row["p_value"]) == pytest.approx(stats.ttest_rel(a, b).pvalue)
    # 3 seeds: the 95 % percentile-bootstrap CI is [min d, max d] (hand-worked in tests/test_stats.py).
    assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx(((a - b).min(), (a - b).max()))
    for arm, field in (("init-scale", "init_scale"), ("init-shape", "init_shape"), ("lr-shape", "lr_shape")):
        c = np.array(values[arm])
        assert float(row[f"{field}_explained"]) == pytest.approx((c - b).mean() / (a - b).mean())
        assert float(row[f"{field}_difference"]) == pytest.approx((c - b).mean())
        assert float(row[f"{field}_p_value"]) == pytest.approx(stats.ttest_rel(c, b).pvalue)
    expected = "confirmed" if (a - b).min() > 0 and stats.ttest_rel(a, b).pvalue < 0.05 else "not confirmed"
    assert row["verdict"] == expected
    (_, weighted) = _csv(classification_report / "table3_classification.csv")
    assert weighted["verdict"] == expected and float(weighted["confirm_difference"]) == pytest.approx((a - b).mean())


def test_timing_table_is_the_median_time_between_epochs(denoising_report, smoke_db):  # noqa: F811
    with sqlite3.connect(smoke_db) as conn:
        epochs = conn.execute("SELECT e.trial_id, e.epoch, e.metrics, t.baseline FROM epochs e JOIN trials t ON "
                              "e.sweep = t.sweep AND e.trial_id = t.trial_id WHERE e.sweep = ? AND t.stage = 'search' "
                              "ORDER BY e.trial_id, e.epoch", (DENOISING,)).fetchall()
    per_trial: dict[str, tuple[bool, list[float]]] = {}
    for trial_id, _, metrics, baseline in epochs:
        per_trial.setdefault(trial_id, (bool(baseline), []))[1].append(json.loads(metrics)["wall_time_s"])
    medians = {t: (base, float(np.median(np.diff(w)))) for t, (base, w) in per_trial.items() if len(w) >= 2}
    (row,) = _csv(denoising_report / "table6_time.csv")
    assert float(row["standard_s"]) == pytest.approx(np.median([m for base, m in medians.values() if base]))
    assert float(row["weighted_s"]) == pytest.approx(np.median([m for base, m in medians.values() if not base]))


def test_the_timing_table_leaves_out_the_members_of_fused_groups_and_says_so(classification_report, confirmed_db):
    """The classification smoke sweep trained in fused groups: a member's epoch time is its group's, so Table 4
    times none of them, and its caption says why."""
    db, _ = confirmed_db
    fused = [r for r in _rows(db, CLASSIFICATION) if r["group_id"] is not None]
    (row,) = _csv(classification_report / "table4_time.csv")
    assert (row["standard_trials"], row["weighted_trials"]) == ("0", "0") and fused
    assert f"{len(fused)} trial(s) trained in fused groups are left out" in \
        (classification_report / "table4_time.md").read_text()


def test_table5_holds_the_databases_numbers_and_the_examples_render(denoising_report, smoke_db):  # noqa: F811
    rows = _rows(smoke_db, DENOISING)
    best = _best_trial(rows, "val_psnr")
    (baseline,) = [r for r in rows if r["baseline"] and r["status"] == "completed"]
    standard, weighted = _csv(denoising_report / "table5_denoising.csv")
    for row, trial in ((standard, baseline), (weighted, best)):
        assert int(row["kernel_size"]) == 5
        for metric in ("nrmse", "psnr", "ssim", "fsim", "uiq"):
            assert float(row[f"test_{metric}"]) == trial["metrics"][f"test_{metric}"]
    assert weighted["alpha"] == "(" + ", ".join(f"{a:.2f}" for a in best["alpha"]) + ")"
    assert weighted["verdict"] == "unconfirmed"
    figures = {p.name for p in (denoising_report / "figures").iterdir()}
    assert {"alpha_tiny_denoiser_k5.png", "examples_tiny_denoiser_k5.png"} <= figures


def test_best_by_model_shows_the_verdict(confirmed_db, capsys):
    db, _ = confirmed_db
    assert main(["best", "--by", "model", "--sweep", CLASSIFICATION, "--storage", f"sqlite:///{db}"]) == 0
    header, _, row, blank, line = capsys.readouterr().out.splitlines()
    verdict = _csv_row_verdict(db)
    assert "verdict" in header and f" {verdict} " in row
    # the terminal table shows each control's share, and one line reads the decomposition
    assert all(f"{arm} share" in header for arm in ("init-scale", "init-shape", "lr-shape"))
    assert blank == "" and line.startswith("tiny_cnn 3×3: gain +") and f", {verdict}; init-scale reproduces " in line
    assert ", init-shape 0.83 (" in line and ", lr-shape 0.17 (" in line  # sweep_db.CONFIRMATION, hand-worked
    assert main(["best", "--by", "model", "--sweep", DENOISING, "--storage", f"sqlite:///{db}"]) == 0
    assert " unconfirmed " in capsys.readouterr().out


def _csv_row_verdict(db: Path) -> str:
    a = np.array([r["metrics"]["test_accuracy"] for r in sorted(_rows(db, CLASSIFICATION, "confirm"),
                                                                 key=lambda r: r["seed"]) if r["arm"] == "alpha"])
    b = np.array([r["metrics"]["test_accuracy"] for r in sorted(_rows(db, CLASSIFICATION, "confirm"),
                                                                 key=lambda r: r["seed"]) if r["arm"] == "baseline"])
    return "confirmed" if (a - b).min() > 0 and stats.ttest_rel(a, b).pvalue < 0.05 else "not confirmed"


# ---------------------------------------------------------------- the report folder


def test_a_second_report_replaces_its_own_files_and_keeps_the_users(classification_report, confirmed_db, tmp_path,
                                                                     capsys):
    db, _ = confirmed_db
    out = tmp_path / "report"
    shutil.copytree(classification_report, out)
    (out / "notes.txt").write_text("mine")
    (out / "figures" / "sketch.png").write_bytes(b"mine")
    stale = out / "figures" / "alpha_old_model_k3.png"
    stale.write_bytes(b"old")
    manifest = json.loads((out / "wconv-report.json").read_text())
    (out / "wconv-report.json").write_text(json.dumps(dict(manifest, files=manifest["files"] + [
        "figures/alpha_old_model_k3.png"])))
    (out / "index.html").write_text("outdated")
    rc, stdout, stderr = _report(db, CLASSIFICATION, out, capsys)
    assert rc == 0 and str(out / "index.html") in stdout and "report [" in stderr
    assert (out / "notes.txt").read_text() == "mine" and (out / "figures" / "sketch.png").read_bytes() == b"mine"
    assert not stale.exists() and (out / "index.html").read_text() != "outdated"
    assert not list(out.glob(".wconv-report-*"))


def test_a_foreign_file_in_the_way_stops_the_report_before_anything_is_written(confirmed_db, tmp_path, capsys):
    db, _ = confirmed_db
    out = tmp_path / "mine"
    out.mkdir()
    (out / "index.html").write_text("my own page")
    rc, _, stderr = _report(db, CLASSIFICATION, out, capsys)
    assert rc == 2 and stderr.count("\n") == 1
    assert f"{out / 'index.html'} exists and was not written by wconv report" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["index.html"] and (out / "index.html").read_text() == "my own page"


# ---------------------------------------------------------------- bad input


def test_unknown_sweep_lists_the_sweeps(smoke_db, tmp_path, capsys):  # noqa: F811
    rc, _, stderr = _report(smoke_db, "smok", tmp_path / "r", capsys)
    assert rc == 2 and stderr == f"wconv report: no sweep 'smok' in the results at sqlite:///{smoke_db}; " \
                                 f"sweeps: {CLASSIFICATION}, {DENOISING}\n"
    assert not (tmp_path / "r").exists()
    rc = main(["best", "--by", "model", "--sweep", CLASSIFICATION, "--model", "vgg", "--storage", f"sqlite:///{smoke_db}"])
    assert rc == 2 and capsys.readouterr().err == f"wconv best: no model 'vgg' in sweep '{CLASSIFICATION}'; models: tiny_cnn\n"


def test_missing_empty_and_unfinished_databases_are_one_clear_line(tmp_path, capsys):
    rc, _, stderr = _report(tmp_path / "none.db", "smoke", tmp_path / "r1", capsys)
    assert rc == 2 and "no results yet" in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "none.db").exists()
    Store(f"sqlite:///{tmp_path}/empty.db").close()  # the tables, no rows
    rc, _, stderr = _report(tmp_path / "empty.db", "smoke", tmp_path / "r2", capsys)
    assert rc == 2 and stderr == "wconv report: no sweep 'smoke' in the results at " \
                                 f"sqlite:///{tmp_path}/empty.db; there are no sweeps yet\n"
    with Store(f"sqlite:///{tmp_path}/partial.db") as store:  # a sweep whose first trial is still running
        store.record_sweep("smoke", task="classification", metric="val_accuracy", mode="max", spec={})
        store.record_trial("smoke", "t", cell="tiny_cnn-k3-s0", model="tiny_cnn", kernel_size=3, seed=0,
                           alpha=[0.8], status="running")
    rc, _, stderr = _report(tmp_path / "partial.db", "smoke", tmp_path / "r3", capsys)
    assert rc == 2 and stderr == "wconv report: sweep 'smoke' has no finished trial yet (1 running); " \
                                 "run the report again when some have finished\n"
    assert not any((tmp_path / name).exists() for name in ("r1", "r2", "r3"))


def test_a_database_from_a_newer_wconv_is_refused(smoke_db, tmp_path, capsys):  # noqa: F811
    db = tmp_path / "newer.db"
    shutil.copy(smoke_db, db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    rc, _, stderr = _report(db, CLASSIFICATION, tmp_path / "r", capsys)
    assert rc == 2 and "newer wconv" in stderr and stderr.count("\n") == 1


def test_checkpoints_missing_here_skip_the_examples_and_say_why(smoke_db, tmp_path, capsys):  # noqa: F811
    db = tmp_path / "moved.db"
    shutil.copy(smoke_db, db)
    with sqlite3.connect(db) as conn:  # as if the checkpoints were written on a cluster's scratch
        conn.execute("UPDATE trials SET checkpoint = '/scratch/gone/' || trial_id WHERE sweep = ?", (DENOISING,))
    rc, _, stderr = _report(db, DENOISING, tmp_path / "r", capsys)
    assert rc == 0 and "figure examples_tiny_denoiser_k5.png skipped: checkpoint /scratch/gone/" in stderr
    assert not (tmp_path / "r" / "figures" / "examples_tiny_denoiser_k5.png").exists()
    html = (tmp_path / "r" / "index.html").read_text()
    assert "Not rendered: checkpoint /scratch/gone/" in html and "figures/alpha_tiny_denoiser_k5.png" in html


# -- every kernel size drawn whole; no α better than α = 1 said the same way everywhere --------------------------


def _synthetic(db: Path, sweep: str, kernel: int, trials: list[tuple], seeds=(0,)) -> None:
    """A classification sweep of hand-made trials: (trial id suffix, α, baseline, val_accuracy) per seed."""
    n = (kernel - 1) // 2
    with Store(f"sqlite:///{db}") as store:
        store.record_sweep(sweep, task="classification", metric="val_accuracy", mode="max",
                           spec={"kernels": {str(kernel): [[0.1, 1.5]] * n}, "training": {"epochs": 2}})
        for seed in seeds:
            for suffix, alpha, baseline, value in trials:
                store.record_trial(sweep, f"s{seed}/{suffix}", cell=f"tiny_cnn-k{kernel}-s{seed}", model="tiny_cnn",
                                   kernel_size=kernel, seed=seed, alpha=alpha, baseline=baseline, status="completed",
                                   epochs_run=2, metrics={"val_accuracy": value + 0.01 * seed,
                                                          "test_accuracy": value})


@pytest.mark.parametrize("kernel", [3, 5, 7, 9])
def test_every_kernel_size_is_drawn_with_all_its_coefficients(tmp_path, kernel):
    from analysis import figures
    from analysis.frames import load

    n = (kernel - 1) // 2
    alphas = [[0.2 + 0.1 * i + 0.3 * j for j in range(n)] for i in range(3)]
    _synthetic(tmp_path / "r.db", "k", kernel, [("b", [1.0] * n, True, 0.80)]
               + [(f"t{i}", a, False, 0.81 + 0.01 * i) for i, a in enumerate(alphas)], seeds=(0, 1))
    frames = load(f"sqlite:///{tmp_path / 'r.db'}", sweep="k")
    (plot,) = [p for p in figures.plots(frames, frames.sweep("k")) if p.name.startswith("alpha_")]
    if n >= 3:
        assert ", ".join(f"α{i}" for i in range(1, n + 1)) in plot.title
    fig = plot.draw()
    label = figures.density_label(n)
    assert label.count("α") == 2 * n and label.count("1") >= 1
    text = " ".join([fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_xlabel() for ax in fig.axes]
                    + [plot.caption])
    if n >= 2:
        assert label in text, text
    else:
        assert "(α1, 1, α1)" in text
    if n >= 3:  # one panel per coefficient and seed, each holding that coefficient's values
        panels = [ax for ax in fig.axes if ax.get_xlabel()]
        assert len(panels) == 2 * n
        for j in range(n):
            xs = {round(float(x), 6) for ax in panels if ax.get_xlabel().startswith(f"α{j + 1}")
                  for c in ax.collections for x in c.get_offsets()[:, 0]}
            assert {round(a[j], 6) for a in alphas} <= xs, (j, xs)


def test_no_alpha_better_than_alpha_one_reads_the_same_in_best_and_in_the_report(tmp_path, capsys):
    db = tmp_path / "r.db"
    _synthetic(db, "worse", 3, [("b", [1.0], True, 0.9), ("t1", [1.05], False, 0.85), ("t2", [0.7], False, 0.80)])
    assert main(["best", "worse", "--by", "model", "--format", "json", "--storage", str(db)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["best_alpha"] == [1.0] and row["beats_baseline"] is False and "no α beat α = 1" in row["note"]
    rc, _, err = _report(db, "worse", tmp_path / "out", capsys)
    assert rc == 0, err
    (report_row,) = _csv(tmp_path / "out" / "best_alpha.csv")
    assert json.loads(report_row["best_alpha"]) == [1.0] and report_row["note"] == row["note"]
    table = (tmp_path / "out" / "table3_classification.md").read_text()
    assert "none better than α = 1" in table and "1.05" in table
