"""The searcher and the scheduler, without a Ray cluster: what Optuna is told, what ASHA records, what a slot
claims (a real SQLite store and a real Optuna journal file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState
from pg import postgres_server, postgres_url  # noqa: F401  (fixtures)
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from analysis.store import Store
from launch.cell import prepare_sweep, trial_id, trials_per_cell
from launch.lease import Holder, take_lease, this_process
from launch.search import BaselineASHA, CellSearch
from launch.spec import parse_sweep


def _sweep(tmp_path: Path, **search):
    return parse_sweep({
        "name": "unit", "task": "classification", "dataset": {"name": "digits"}, "models": ["tiny_cnn"],
        "kernels": {3: [[0.5, 1.5]]}, "search": {"num_samples": 4, "metric": "val_accuracy", **search},
        "training": {"epochs": 9}, "storage": f"sqlite:///{tmp_path / 'wconv.db'}",
    })


@pytest.fixture
def cell_search(tmp_path):
    sweep, runs = prepare_sweep(_sweep(tmp_path), tmp_path / "runs")
    cell = sweep.cells()[0]
    return sweep, cell, runs, lambda holder=None: CellSearch(sweep, cell, runs, holder or this_process())


def _last_report(alpha_final: float, alpha_last: float, epoch: int = 9) -> dict:
    """A completed trial's last report as Tune hands it to a searcher (flattened)."""
    return {"epoch": epoch, "val_accuracy": alpha_last, "finished": True, "trial_status": "completed",
            "final/val_accuracy": alpha_final, "final/best_epoch": 4, "baseline": False}


def test_a_completed_trial_is_told_its_best_epoch_not_its_last(cell_search):
    sweep, cell, runs, make = cell_search
    search = make()
    first = search.suggest("t0")  # the baseline comes first
    assert first == {"alpha_1": 1.0}
    config = search.suggest("t1")
    search.on_trial_result("t1", {"epoch": 1, "val_accuracy": 0.5})
    search.on_trial_complete("t1", _last_report(alpha_final=0.91, alpha_last=0.62))
    told = [t for t in search.study.trials if t.params == config]
    assert len(told) == 1 and told[0].state == TrialState.COMPLETE
    assert told[0].value == pytest.approx(0.91)
    assert told[0].intermediate_values == {1: 0.5}


def test_after_a_resume_the_study_is_told_what_the_store_kept(cell_search):
    sweep, cell, runs, make = cell_search
    search = make()
    search.suggest("t0")
    config = search.suggest("t1")
    tid = trial_id(cell, (config["alpha_1"],))
    # The driver was killed after the store recorded the trial, before the study was told.
    with Store(sweep.storage) as store:
        store.record_trial(sweep.name, tid, status="completed", metrics={"val_accuracy": 0.88, "test_accuracy": 0.8})
    resumed = make(Holder("another-run", "host", 1, 0.0, None))
    (told,) = [t for t in resumed.study.trials if t.params == config]
    assert told.state == TrialState.COMPLETE and told.value == pytest.approx(0.88)


def test_a_trial_the_study_finished_but_the_store_did_not_is_run_again_without_touching_the_study(cell_search):
    """A SLURM task suspended and cancelled between the study's tell and the store's write (seen in a full run:
    the resumed trial's first report raised Optuna's UpdateFinishedTrialError and failed both array tasks)."""
    sweep, cell, runs, make = cell_search
    first = make(Holder("cancelled", "h", 1, 0.0, None))
    first.suggest("t0")
    config = first.suggest("t1")
    first.on_trial_result("t1", {"epoch": 1, "val_accuracy": 0.5})
    asked = first.study_trial(trial_id(cell, (config["alpha_1"],)))
    first.study.tell(asked.number, 0.9)  # what on_trial_complete tells; the store still says "running"
    resumed = make(Holder("resubmitted", "h", 2, 0.0, None))
    assert resumed.suggest("r0") == {"alpha_1": 1.0}  # the orphans, baseline first
    assert resumed.suggest("r1") == config
    replay = {"epoch": 2, "val_accuracy": 0.6, "replay": [{"epoch": 1, "val_accuracy": 0.5}]}
    resumed.on_trial_result("r1", replay)
    resumed.on_trial_complete("r1", _last_report(alpha_final=0.7, alpha_last=0.6))
    (told,) = [t for t in resumed.study.trials if t.params == config]
    assert told.state == TrialState.COMPLETE and told.value == pytest.approx(0.9)
    assert told.intermediate_values == {1: 0.5}


def test_stopped_and_failed_trials_are_pruned_and_failed(cell_search):
    sweep, cell, runs, make = cell_search
    search = make()
    search.suggest("t0")
    stopped, failed = search.suggest("t1"), search.suggest("t2")
    search.on_trial_result("t1", {"epoch": 1, "val_accuracy": 0.3})
    search.on_trial_complete("t1", {"epoch": 1, "val_accuracy": 0.3})  # not finished: ASHA ended it
    search.on_trial_complete("t2", {"epoch": 2, "finished": True, "trial_status": "failed"})
    states = {tuple(t.params.values()): t.state for t in search.study.trials}
    assert states[tuple(stopped.values())] == TrialState.PRUNED
    assert states[tuple(failed.values())] == TrialState.FAIL


def test_a_cell_never_claims_more_than_its_trials_and_never_an_alpha_twice(cell_search):
    sweep, cell, runs, make = cell_search
    a, b = make(Holder("a", "h", 1, 0.0, None)), make(Holder("b", "h", 2, 0.0, None))
    with Store(sweep.storage) as store:  # both workers hold a live lease on the cell
        take_lease(store, sweep.name, cell.id, 0, a.holder.row(), gone=lambda lease: False)
        take_lease(store, sweep.name, cell.id, 1, b.holder.row(), gone=lambda lease: False)
    claimed = []
    for i in range(10):
        for worker in (a, b):
            config = worker.suggest(f"{worker.holder.owner}{i}")
            if config != "FINISHED":
                claimed.append(config["alpha_1"])
    assert len(claimed) == trials_per_cell(sweep) and len(set(claimed)) == len(claimed)
    assert claimed.count(1.0) == 1


def test_a_proposal_the_cell_already_has_is_never_run(cell_search):
    sweep, cell, runs, make = cell_search
    search = make()
    search.suggest("t0")
    taken = search.suggest("t1")["alpha_1"]
    # The study proposes the same α again twice (as a re-seeded sampler did after a kill), then a new one.
    for alpha in (taken, taken, 0.7):
        search.study.enqueue_trial({"alpha_1": alpha})
    assert search.suggest("t2") == {"alpha_1": 0.7}
    duplicates = [t for t in search.study.trials if t.user_attrs.get("duplicate")]
    assert len(duplicates) == 2 and all(t.state == TrialState.FAIL for t in duplicates)
    with Store(sweep.storage) as store:
        alphas = [a[0] for a in store.trials(sweep=sweep.name)["alpha"]]
    assert sorted(alphas) == sorted([1.0, taken, 0.7])


def test_a_trial_left_running_by_a_gone_runner_is_claimed_again_before_anything_new(cell_search):
    sweep, cell, runs, make = cell_search
    dead = make(Holder("dead", "h", 1, 0.0, None))
    dead.suggest("t0")
    left = dead.suggest("t1")
    survivor = make(Holder("alive", "h", 2, 0.0, None))  # the dead runner holds no lease
    assert survivor.suggest("s0") == {"alpha_1": 1.0}
    assert survivor.suggest("s1") == left
    with Store(sweep.storage) as store:
        owners = set(store.trials(sweep=sweep.name)["owner"])
    assert owners == {"alive"}


def _trial(alpha: float) -> Trial:
    return Trial("fn", config={"alpha_1": alpha}, trial_id=f"trial_{alpha}", stub=True)


def test_asha_never_stops_the_baseline_nor_records_it_in_a_rung():
    asha = BaselineASHA(time_attr="epoch", metric="val_accuracy", mode="max", max_t=9, grace_period=1,
                        reduction_factor=3)
    base, other = _trial(1.0), _trial(0.7)
    for t in (base, other):
        asha.on_trial_add(None, t)
    for epoch in range(1, 10):
        assert asha.on_trial_result(None, base, {"epoch": epoch, "val_accuracy": 0.99, "baseline": True}) \
            == TrialScheduler.CONTINUE
    asha.on_trial_complete(None, base, {"epoch": 9, "val_accuracy": 0.99, "baseline": True})
    recorded = [v for bracket in asha._brackets for rung in bracket._rungs for v in rung[1].values()]
    assert recorded == []  # Ray's ASHA would hold the baseline's 0.99 in every rung here
    asha.on_trial_result(None, other, {"epoch": 1, "val_accuracy": 0.5, "baseline": False})
    recorded = [v for bracket in asha._brackets for rung in bracket._rungs for v in rung[1].values()]
    assert recorded == [0.5]


def _claim_all(url: str, runs: str, worker: int, barrier, results) -> None:
    """One worker process of a shared cell: claims until the cell needs nothing more, as array tasks do."""
    import traceback

    try:
        sweep = _sweep(Path(runs).parent).model_copy(update={"storage": url})
        cell = sweep.cells()[0]
        barrier.wait(timeout=60)
        search = CellSearch(sweep, cell, Path(runs), Holder(f"w{worker}", "h", worker, 0.0, None))
        with Store(url) as store:
            take_lease(store, sweep.name, cell.id, worker, search.holder.row(), gone=lambda lease: False)
        claimed = []
        while (config := search.suggest(f"w{worker}-{len(claimed)}")) != "FINISHED":
            claimed.append(config["alpha_1"])
        results.put(claimed)
    except BaseException:
        results.put(traceback.format_exc())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_eight_workers_claiming_one_cell_at_once_get_each_trial_exactly_once(tmp_path, backend, request):
    import multiprocessing

    url = (f"sqlite:///{tmp_path / 'wconv.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url"))
    sweep = _sweep(tmp_path).model_copy(update={"storage": url})
    prepare_sweep(sweep, tmp_path / "runs")
    ctx = multiprocessing.get_context("fork")  # each child opens its own store and study, as array tasks do
    barrier, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(url, str(tmp_path / "runs"), w, barrier, results)) for w in range(8)]
    for p in procs:
        p.start()
    claims = [results.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [c for c in claims if isinstance(c, str)] == []
    everything = [a for c in claims for a in c]
    assert len(everything) == trials_per_cell(sweep) and len(set(everything)) == len(everything)
    assert everything.count(1.0) == 1
    with Store(url) as store:
        rows = store.trials(sweep=sweep.name)
    assert len(rows) == trials_per_cell(sweep) and rows["trial_id"].is_unique
