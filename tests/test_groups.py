"""Fused groups driven by sweeps (``resources.group_size``): ASHA decides per member as it decides lone trials, a
grid sweep trained in groups gives what it gives trial by trial, and a confirmation fuses the arms of a seed."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from analysis.store import TERMINAL, Store
from launch.cell import trial_id
from launch.search import BaselineASHA, MemberASHA
from launch.spec import load_sweep
from wconv.train import BASELINE, EPOCH, FINISHED

ROOT = Path(__file__).resolve().parents[1]


# -- ASHA per member ------------------------------------------------------------------------------------------


def _asha_sweep(tmp_path: Path, mode: str, epochs: int, grace: int, rf: float):
    spec = {"name": "rungs", "task": "classification", "dataset": {"name": "digits"}, "models": ["tiny_cnn"],
            "kernels": {3: [[0.5, 1.5]]},
            "search": {"num_samples": 11, "metric": "val_accuracy" if mode == "max" else "val_loss", "mode": mode},
            "scheduler": {"type": "asha", "grace_period": grace, "reduction_factor": rf},
            "training": {"epochs": epochs}, "storage": f"sqlite:///{tmp_path / 'rungs.db'}"}
    path = tmp_path / "rungs.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_sweep(path)


def _streams(rng: random.Random, trials: int, epochs: int) -> list[list[float]]:
    """Per trial, a metric per epoch: a trial's level plus noise, so rungs cut different trials at different epochs."""
    return [[rng.uniform(0, 1) + 0.3 * rng.uniform(-1, 1) * (e + 1) / epochs for e in range(epochs)]
            for _ in range(trials)]


def _ray_decisions(sweep, streams: list[list[float]], baseline: int, order, ends=None) -> dict[int, int]:
    """Ray Tune's ASHA (``BaselineASHA``) fed each trial's reports in ``order`` (one (trial, epoch) after another), as
    Tune feeds it lone trials; trial → the epoch it was stopped at. ``ends``: trial → the epoch it ends at by itself
    (patience), before the budget."""
    ends = ends or {}
    scheduler = BaselineASHA(time_attr=EPOCH, metric=sweep.metric, mode=sweep.mode, max_t=len(streams[0]),
                             grace_period=sweep.scheduler.grace_period,
                             reduction_factor=sweep.scheduler.reduction_factor)
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(len(streams))]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    stopped = {}
    for batch in order:
        for i, epoch in batch:
            if i in stopped or epoch > ends.get(i, len(streams[i])):
                continue
            result = {EPOCH: epoch, sweep.metric: streams[i][epoch - 1], BASELINE: i == baseline}
            if epoch == ends.get(i, len(streams[i])):  # its last result, then its end
                scheduler.on_trial_result(None, trials[i], result)
                scheduler.on_trial_complete(None, trials[i], result)
            elif scheduler.on_trial_result(None, trials[i], result) == "STOP":
                scheduler.on_trial_remove(None, trials[i])
                stopped[i] = epoch
    return stopped


def _member_decisions(sweep, streams, baseline: int, order, groups: list[list[int]], tmp_path: Path,
                      ends=None) -> dict[int, int]:
    """``MemberASHA`` deciding the same reports for trials trained in ``groups`` (one ``MemberASHA`` per group, as
    each group's trainable has its own): each batch of ``order`` is one group's epoch, whose reports reach the store
    after its decisions, as the trainable passes them on (``{epoch, members}``) and the driver records them."""
    store = Store(sweep.storage)
    cell = sweep.cells()[0]
    tids = [trial_id(cell, (0.5 + i / 100,)) for i in range(len(streams))]
    for i, tid in enumerate(tids):
        store.record_trial(sweep.name, tid, cell=cell.id, baseline=i == baseline, status="running", stage="search")
    deciders = {i: MemberASHA(sweep, cell) for group in groups for i in [group[0]]}
    owner = {i: group[0] for group in groups for i in group}
    ends, stopped = ends or {}, {}
    for batch in order:
        reported = []
        for i, epoch in batch:
            if i in stopped or epoch > ends.get(i, len(streams[i])):
                continue
            report = {EPOCH: epoch, sweep.metric: streams[i][epoch - 1], BASELINE: i == baseline,
                      FINISHED: epoch == ends.get(i, len(streams[i]))}
            if deciders[owner[i]].decide(tids[i], report):
                stopped[i] = epoch
            reported.append((i, epoch))
        for i, epoch in reported:
            store.record_epochs(sweep.name, tids[i], {epoch: {sweep.metric: streams[i][epoch - 1]}})
    return stopped


# Seeds 3 and 6: streams where a trial that ends by itself at a rung moves a later member's cut-off (so recording
# it matters); 20: one where it does not.
@pytest.mark.parametrize("mode, epochs, grace, rf, size, seed", [("max", 9, 1, 2, 4, 3), ("min", 20, 2, 3, 3, 20),
                                                                 ("max", 16, 2, 2.5, 12, 6)])
def test_members_of_groups_are_stopped_where_ray_asha_stops_the_same_lone_trials(tmp_path, mode, epochs, grace, rf,
                                                                                  size, seed):
    """The same metric streams, in the same order: Ray's ASHA deciding lone trials, and ``MemberASHA`` deciding the
    members of groups of ``size`` (trial 0, the baseline, in the first group) that train side by side epoch by
    epoch, some ending by themselves on the way. Same stops, at the same epochs; the baseline never stopped."""
    sweep = _asha_sweep(tmp_path, mode, epochs, grace, rf)
    streams = _streams(random.Random(seed), 12, epochs)
    groups = [list(range(start, min(start + size, 12))) for start in range(0, 12, size)]
    # Groups side by side (two slots), in lockstep: each group's epoch is one batch of reports.
    order = [[(i, epoch) for i in group] for epoch in range(1, epochs + 1) for group in groups]
    # Three trials end by themselves (patience) before the budget, one of them at the first rung.
    ends = {2: sweep.scheduler.grace_period, 7: epochs // 2, 10: epochs - 2}
    lone = _ray_decisions(sweep, streams, 0, order, ends)
    fused = _member_decisions(sweep, streams, 0, order, groups, tmp_path, ends)
    assert lone, "no trial was stopped: the streams test nothing"
    assert fused == lone
    assert 0 not in fused


def test_trials_one_after_another_are_stopped_as_ray_asha_stops_them(tmp_path):
    """Groups that follow each other (one slot) see the earlier groups' rungs in the store, as Ray's ASHA remembers
    the earlier trials."""
    sweep = _asha_sweep(tmp_path, "max", 9, 1, 3)
    streams = _streams(random.Random(3), 9, 9)
    groups = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    order = [[(i, epoch) for i in group] for group in groups for epoch in range(1, 10)]
    lone = _ray_decisions(sweep, streams, 0, order)
    assert lone and _member_decisions(sweep, streams, 0, order, groups, tmp_path) == lone


# -- through the launcher -------------------------------------------------------------------------------------


def _grid_sweep(tmp_path: Path, name: str, *, epochs=3, steps=6, points=4, concurrent=None) -> Path:
    spec = {
        "name": name, "task": "classification", "dataset": {"name": "digits"},
        "models": [{"name": "tiny_cnn", "options": {"width": 0.5}}], "kernels": {3: [[0.5, 1.5]]},
        "search": {"sampler": "grid", "grid_points": points, "metric": "val_accuracy", "seed": 0,
                   "max_concurrent": concurrent},
        "scheduler": {"type": "fifo"},
        "training": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "hflip": False, "max_steps_per_epoch": steps},
        "resources": {"cpus_per_trial": 1}, "storage": f"sqlite:///{tmp_path / 'wconv.db'}",
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _wconv(*args, cwd: Path, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT)))


REL = 2e-3
"""How far a fused member's float32 numbers may drift from its lone trial's. Fused, a conv of K members is one conv
with K·C channels (or a grouped conv), whose kernels sum in another order: each step's float32 rounding differs
(≈1e-7 relative), and SGD carries it through a few epochs of training; accuracy is a count over examples, so an
example on the decision boundary can flip (1/288 of the validation split ≈ 3.5e-3). Measured here (3 epochs of 6
steps): losses within 1e-5 relative. In float64 ``tests/test_fused.py`` holds members to 1e-9."""


@pytest.mark.integration
def test_a_grid_sweep_in_groups_of_four_gives_what_it_gives_trial_by_trial(tmp_path):
    """``sampler: grid`` with 4 points per coefficient and FIFO, run with ``group_size: 4`` and with 1: the same α,
    and for each α the same per-epoch validation loss and final metrics, within float32's rounding (``REL``)."""
    results = {}
    for size in (1, 4):
        path = _grid_sweep(tmp_path, f"grid{size}")
        done = _wconv("run", str(path), "--set", f"resources.group_size={size}", "--runs-dir", str(tmp_path / "runs"),
                      "--num-cpus", "2", cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        store = Store(f"sqlite:///{tmp_path / 'wconv.db'}")
        trials = store.trials(sweep=f"grid{size}")
        assert len(trials) == 5 and trials["status"].eq("completed").all(), trials[["trial_id", "status"]]
        groups = trials["group_id"].dropna()
        assert groups.empty if size == 1 else groups.nunique() == 2 and len(groups) == 5  # 4 + 1
        epochs = store.epochs(f"grid{size}")
        results[size] = {tuple(row["alpha"]): (row["metrics"], {
            int(e["epoch"]): e["metrics"]["val_loss"] for e in epochs[epochs["trial_id"] == row["trial_id"]].to_dict(
                "records")}) for row in trials.to_dict("records")}
    assert set(results[1]) == set(results[4]) and len(results[1]) == 5
    for alpha, (final, per_epoch) in results[1].items():
        fused_final, fused_epochs = results[4][alpha]
        assert fused_epochs == pytest.approx(per_epoch, rel=REL), alpha
        numbers = {k: v for k, v in final.items() if isinstance(v, float)}
        assert {k: fused_final[k] for k in numbers} == pytest.approx(numbers, rel=REL, abs=REL), alpha


@pytest.mark.integration
def test_a_fused_confirmation_equals_the_unfused_one_arm_for_arm(tmp_path):
    """``wconv confirm --seeds 2`` with every control, once trial by trial and once with ``group_size: 4`` (α, α = 1,
    init-scale and init-shape of a seed in one group; lr-shape alone), each from a copy of the same searched store:
    the same arms on the same seeds, with the same final metrics within float32's rounding."""
    from launch.cell import prepare_sweep

    # One trial at a time: a second trial worker costs its imports (~13 s of CPU) for trials of under a second.
    path = _grid_sweep(tmp_path, "conf", epochs=2, steps=8, points=2, concurrent=1)
    prepare_sweep(load_sweep(path), tmp_path / "runs")  # the sweep recorded, as its search records it (α is given)
    finals = {}
    for size in (1, 4):
        db = tmp_path / f"confirm{size}.db"
        shutil.copy(tmp_path / "wconv.db", db)
        done = _wconv("confirm", "conf", "--storage", f"sqlite:///{db}", "--seeds", "2", "--alpha", "0.8",
                      "--control", "init-scale,init-shape,lr-shape", "--set", f"resources.group_size={size}",
                      "--runs-dir", str(tmp_path / f"runs{size}"), cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        arms = Store(f"sqlite:///{db}").trials(sweep="conf", stage="confirm")
        assert len(arms) == 2 * 5 and arms["status"].isin(TERMINAL).all(), arms[["trial_id", "status", "reason"]]
        if size == 4:
            grouped = arms.dropna(subset=["group_id"])
            assert set(grouped["arm"]) == {"alpha", "baseline", "init-scale", "init-shape"}
            assert grouped.groupby("group_id")["seed"].nunique().eq(1).all() and grouped["group_id"].nunique() == 2
            assert (grouped.groupby("group_id")["cell"].first() + "/group-baseline-alpha=1.0").tolist() == sorted(
                grouped["group_id"].unique())
            assert arms.loc[arms["arm"] == "lr-shape", "group_id"].isna().all()
        finals[size] = {(row["arm"], row["seed"]): row["metrics"] for row in arms.to_dict("records")}
    assert set(finals[1]) == set(finals[4])
    for key, final in finals[1].items():
        numbers = {k: v for k, v in final.items() if isinstance(v, float)}
        assert {k: finals[4][key][k] for k in numbers} == pytest.approx(numbers, rel=REL, abs=REL), key


# -- what a slot claims, in groups (no Ray: a real SQLite store and Optuna journal) ---------------------------


def _claims_sweep(tmp_path: Path, size: int, samples=6, **training):
    from launch.cell import prepare_sweep
    from launch.spec import parse_sweep

    spec = {"name": "claims", "task": "classification", "dataset": {"name": "digits"}, "models": ["tiny_cnn"],
            "kernels": {3: [[0.5, 1.5]]}, "search": {"num_samples": samples, "metric": "val_accuracy"},
            "training": {"epochs": 9, **training}, "resources": {"group_size": size},
            "storage": f"sqlite:///{tmp_path / 'wconv.db'}"}
    sweep, runs = prepare_sweep(parse_sweep(spec), tmp_path / "runs")
    return sweep, sweep.cells()[0], runs


def _searcher(sweep, cell, runs, owner: str, size: int | None = None):
    from launch.lease import Holder
    from launch.search import CellSearch

    if size is not None:
        sweep = sweep.model_copy(update={"resources": sweep.resources.model_copy(update={"group_size": size})})
    return CellSearch(sweep, cell, runs, Holder(owner, "h", hash(owner) % 10_000, 0.0, None))


def _member_report(member: int, epoch: int, status: str | None = None) -> dict:
    report = {"epoch": epoch, "member": member, "val_accuracy": 0.5 + member / 100, "baseline": member == 0}
    if status:
        report.update(finished=True, trial_status=status, final={"val_accuracy": 0.6 + member / 100})
    return report


def test_a_slot_claims_the_baseline_and_up_to_k_new_alpha_as_one_group_the_last_group_smaller(tmp_path):
    from launch.cell import group_id

    sweep, cell, runs = _claims_sweep(tmp_path, 3, samples=6)  # 7 trials: 3 + 3 + 1
    search = _searcher(sweep, cell, runs, "a")
    groups = []
    while (config := search.suggest(f"t{len(groups)}")) != "FINISHED":
        groups.append(config)
        assert len(groups) <= 3
    assert [len(g["members"]) for g in groups] == [3, 3, 1]
    assert groups[0]["members"][0]["alpha"] == [1.0]  # the baseline, member 0 of the first group
    alphas = [tuple(m["alpha"]) for g in groups for m in g["members"]]
    assert len(set(alphas)) == 7
    rows = Store(sweep.storage).trials(sweep="claims").set_index("trial_id")
    for g in groups:
        assert g["group"] == group_id(cell, g["members"][0]["alpha"])
        for i, m in enumerate(g["members"]):
            row = rows.loc[trial_id(cell, m["alpha"])]
            assert (row["group_id"], row["member"], row["status"], row["owner"]) == (g["group"], i, "running", "a")
    # The K proposals of a group are asked of the study together (TPE with constant_liar keeps them apart).
    assert len(search.study.trials) == 6 and search.study.sampler._constant_liar


def test_a_killed_group_is_claimed_back_whole_in_its_order_also_by_a_run_without_groups(tmp_path):
    sweep, cell, runs, = _claims_sweep(tmp_path, 3, samples=4)
    dead = _searcher(sweep, cell, runs, "dead")
    first, second = dead.suggest("d0"), dead.suggest("d1")
    dead.on_trial_result("d0", {"epoch": 2, "members": [_member_report(1, 2, "stopped")]})  # member 1 ended
    Store(sweep.storage).record_trial("claims", trial_id(cell, first["members"][1]["alpha"]), status="stopped",
                                      owner="dead")  # as the driver's store callback records it
    # Another run takes over (the dead runner holds no lease), with groups, then one without them.
    from launch.lease import take_lease

    survivor = _searcher(sweep, cell, runs, "alive")
    with Store(sweep.storage) as store:  # the survivor is live: what it took back is not an orphan
        take_lease(store, sweep.name, cell.id, 0, survivor.holder.row(), gone=lambda lease: False)
    again = survivor.suggest("s0")
    assert again == first  # the whole group, ended member included: it continues from its group.pt
    lone = _searcher(sweep, cell, runs, "lone", size=1)
    assert lone.suggest("l0") == second  # a run with group_size 1 also continues a group whole
    assert lone.suggest("l1") == "FINISHED"
    rows = Store(sweep.storage).trials(sweep="claims").set_index("trial_id")
    owners = {rows.loc[trial_id(cell, m["alpha"]), "owner"] for m in first["members"]}
    assert owners == {"alive", "dead"}  # the ended member keeps its last owner: nothing of it is run again
    (told,) = [t for t in dead.study.trials if t.params == {"alpha_1": first["members"][1]["alpha"][0]}]
    assert told.state.name == "PRUNED"  # told at its end, inside the group


def test_two_workers_of_a_cell_claim_whole_groups_and_never_an_alpha_twice(tmp_path):
    from launch.lease import take_lease

    sweep, cell, runs = _claims_sweep(tmp_path, 2, samples=8)
    a, b = _searcher(sweep, cell, runs, "a"), _searcher(sweep, cell, runs, "b")
    with Store(sweep.storage) as store:  # both workers hold a live lease on the cell
        take_lease(store, sweep.name, cell.id, 0, a.holder.row(), gone=lambda lease: False)
        take_lease(store, sweep.name, cell.id, 1, b.holder.row(), gone=lambda lease: False)
    claimed = {"a": [], "b": []}
    for i in range(6):
        for worker in (a, b):
            config = worker.suggest(f"{worker.holder.owner}{i}")
            if config != "FINISHED":
                claimed[worker.holder.owner].append(config)
    groups = claimed["a"] + claimed["b"]
    alphas = [tuple(m["alpha"]) for g in groups for m in g["members"]]
    assert len(alphas) == 9 and len(set(alphas)) == 9 and alphas.count((1.0,)) == 1
    assert sorted(len(g["members"]) for g in groups) == [1, 2, 2, 2, 2] and claimed["a"] and claimed["b"]
    rows = Store(sweep.storage).trials(sweep="claims")
    assert rows.groupby("group_id")["owner"].nunique().eq(1).all()  # a group is one worker's


def test_with_learnable_alpha_the_baseline_trains_alone_and_the_rest_in_groups(tmp_path):
    sweep, cell, runs = _claims_sweep(tmp_path, 4, samples=4, learnable_alpha=True)
    search = _searcher(sweep, cell, runs, "a")
    first, second = search.suggest("t0"), search.suggest("t1")
    assert first == {"group": None, "members": [{"alpha": [1.0], "arm": None}]}
    assert second["group"] is not None and len(second["members"]) == 4 and search.suggest("t2") == "FINISHED"
