"""Nothing in a shared folder can be turned against its user: checkpoints are read without running what they
hold, a PostgreSQL password given in the storage URL is written to no file, and runs folders are owner-only."""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from pg import postgres_server, postgres_url  # noqa: F401  (fixtures)

from wconv.checkpoint import UnsafeCheckpoint, load_checkpoint
from wconv.fused import GROUP_CHECKPOINT, run_group
from wconv.train import CHECKPOINT, TrainingConfig, TrialConfig, resume_trial, run_trial

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "Wc0nvSecretPw7q"
"""Letters and digits only: the same bytes in a URL, in a pickle and in a JSON column."""


# ---------------------------------------------------------------- checkpoints


class _RunsCode:
    """Unpickled, it writes ``marker``: what a planted checkpoint would do with the user's rights."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def _plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "state": {"epoch": 1}, "config": _RunsCode(marker)}, path)
    return path


def _config() -> TrialConfig:
    tc = TrainingConfig.for_task("classification", epochs=2, batch_size=64, max_steps_per_epoch=2, hflip=False)
    return TrialConfig(model="tiny_cnn", dataset="digits", kernel_size=3, alpha=(0.7,), seed=3, training=tc)


def test_planted_checkpoint_is_refused_in_one_line_naming_the_file_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    planted = _plant(tmp_path / "trial-a" / CHECKPOINT, marker)
    with pytest.raises(UnsafeCheckpoint) as refused:
        load_checkpoint(planted)
    message = str(refused.value)
    assert message.startswith(f"{planted}: ") and "holds exec," in message and "\n" not in message
    assert not marker.exists()
    torch.load(planted, weights_only=False)  # the file is a real threat: an unrestricted load runs it
    assert marker.read_text() == "ran"


def test_a_trial_a_group_and_a_report_refuse_a_planted_checkpoint(tmp_path):
    from analysis.figures import _load_model

    marker = tmp_path / "marker"
    trial = tmp_path / "trial"
    _plant(trial / CHECKPOINT, marker)
    with pytest.raises(UnsafeCheckpoint, match=str(trial / CHECKPOINT)):
        run_trial(_config(), lambda m, d: None, trial)
    with pytest.raises(UnsafeCheckpoint, match=str(trial / CHECKPOINT)):
        resume_trial(trial, lambda m, d: None)
    group = tmp_path / "group"
    _plant(group / GROUP_CHECKPOINT, marker)
    members = [_config(), replace(_config(), alpha=(1.2,))]
    with pytest.raises(UnsafeCheckpoint, match=str(group / GROUP_CHECKPOINT)):
        run_group(members, lambda m, d: None, group)
    with pytest.raises(UnsafeCheckpoint, match=str(trial / CHECKPOINT)):
        _load_model(str(trial))  # a report's example figures
    assert not marker.exists()


def test_checkpoints_that_trials_and_groups_write_load_safely(tmp_path):
    """What wconv writes (model, optimiser, scheduler, data order, torch/NumPy/Python RNG, progress, config)
    is all the restricted unpickler needs to know; resuming is covered by test_train.py and test_fused.py."""
    run_trial(_config(), lambda m, d: None, tmp_path / "trial")
    members = [_config(), replace(_config(), alpha=None, baseline=True)]
    run_group(members, lambda m, d: None, tmp_path / "group", [tmp_path / "m0", tmp_path / "m1"])
    for path in (tmp_path / "trial" / CHECKPOINT, tmp_path / "group" / GROUP_CHECKPOINT, tmp_path / "m1" / CHECKPOINT):
        saved = load_checkpoint(path)
        assert saved["rng"]["numpy"][1].dtype == "uint32"


# ---------------------------------------------------------------- the password and the runs folder


def _sweep_file(tmp_path: Path, name: str) -> Path:
    spec = {
        "name": name,
        "task": "classification",
        "dataset": {"name": "digits"},
        "models": [{"name": "tiny_cnn", "options": {"width": 0.5}}],
        "kernels": {3: [[0.5, 1.5]]},
        "search": {"num_samples": 1, "metric": "val_accuracy", "seed": 0},
        "scheduler": {"type": "fifo"},
        "training": {"epochs": 2, "batch_size": 64, "lr": 0.05, "hflip": False, "max_steps_per_epoch": 2},
        "resources": {"cpus_per_trial": 1},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _env(**extra) -> dict:
    """No password from the test's own environment or ~/.pgpass: only the URL can supply it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    return dict(env, PYTHONPATH=str(ROOT), PGPASSFILE=os.devnull, **extra)


def _wconv(*args, cwd: Path, timeout=900, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=_env(**env), umask=0o022)  # the usual umask: group and others read


@pytest.fixture(scope="module")
def password_db(postgres_server):
    """A database owned by a role that must give ``PASSWORD`` (scram-sha-256 for it alone on 127.0.0.1)."""
    import psycopg

    role = f"wsec{os.getpid()}"
    admin = dict(host="127.0.0.1", port=postgres_server.port, user="postgres", dbname="postgres", autocommit=True)
    with psycopg.connect(**admin) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())  # first match wins
        conn.execute("SELECT pg_reload_conf()")
    name = postgres_server.create_database().rsplit("/", 1)[1]
    with psycopg.connect(**admin) as conn:
        conn.execute(f'ALTER DATABASE "{name}" OWNER TO {role}')
    with pytest.raises(psycopg.OperationalError, match="password"):  # the password is really asked for
        psycopg.connect(host="127.0.0.1", port=postgres_server.port, user=role, dbname=name, passfile=os.devnull)
    return {"url": f"postgresql+psycopg://{role}:{PASSWORD}@127.0.0.1:{postgres_server.port}/{name}",
            "admin": dict(admin, dbname=name)}


@pytest.fixture(scope="module")
def password_run(password_db, tmp_path_factory):
    """One real `wconv run` against the password-protected database, the password inside --storage only."""
    tmp = tmp_path_factory.mktemp("password-run")
    runs = tmp / "results" / "runs"
    run = _wconv("run", str(_sweep_file(tmp, "secret")), "--runs-dir", str(runs), "--storage", password_db["url"],
                 cwd=tmp)
    assert run.returncode == 0, run.stderr[-3000:]
    return {"runs": runs, "run": run, **password_db}


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]


@pytest.mark.integration
def test_a_password_in_storage_reaches_the_trials_but_no_file_of_the_runs_folder(password_run):
    import psycopg

    with psycopg.connect(**password_run["admin"]) as conn:
        statuses = [r[0] for r in conn.execute("SELECT status FROM trials WHERE sweep = 'secret'")]
        assert sorted(statuses) == ["completed", "completed"]  # the trials' workers connected with the password
    files = _files(password_run["runs"])
    assert any(p.suffix == ".pt" for p in files) and any(p.suffix == ".pkl" for p in files)  # pickles were written
    holding = [str(p) for p in files if PASSWORD.encode() in p.read_bytes()]
    assert holding == []
    run = password_run["run"]
    assert PASSWORD not in run.stdout + run.stderr


@pytest.mark.integration
def test_the_recorded_sweep_and_every_row_hold_no_password(password_run):
    import psycopg

    with psycopg.connect(**password_run["admin"]) as conn:
        spec = conn.execute("SELECT spec FROM sweeps WHERE name = 'secret'").fetchone()[0]
        assert "@127.0.0.1" in spec  # the storage URL is recorded, without its password
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        assert {"sweeps", "trials", "epochs"} <= set(tables)
        holding = [t for t in tables if conn.execute(f'SELECT count(*) FROM "{t}" r WHERE r::text LIKE %s',
                                                     (f"%{PASSWORD}%",)).fetchone()[0]]
    assert holding == []


@pytest.mark.integration
def test_the_runs_folder_and_everything_in_it_is_readable_by_its_owner_only(password_run):
    runs = password_run["runs"]
    paths = [runs.parent, runs, *runs.rglob("*")]
    assert len(paths) > 10
    shared = [f"{p} {stat.filemode(p.lstat().st_mode)}" for p in paths
              if not p.is_symlink() and p.lstat().st_mode & 0o077]
    assert shared == []


def test_tasks_of_a_prepared_sweep_pickle_without_the_password(password_db, tmp_path, monkeypatch):
    from launch.cell import prepare_sweep
    from launch.launcher import plan_tasks
    from launch.slurm import CellJob
    from launch.spec import load_sweep

    monkeypatch.setenv("PGPASSWORD", "")  # given back as it was (unset) at the end of the test
    monkeypatch.setenv("PGPASSFILE", os.devnull)
    sweep = load_sweep(_sweep_file(tmp_path, "pickled")).model_copy(update={"storage": password_db["url"]})
    prepared, runs = prepare_sweep(sweep, tmp_path / "runs")  # connects: the password went to libpq
    assert PASSWORD not in prepared.storage and prepared.storage.startswith("postgresql+psycopg://wsec")
    tasks = plan_tasks(prepared, runs)
    assert tasks and PASSWORD.encode() not in pickle.dumps([CellJob(t) for t in tasks])


def test_submit_refuses_a_password_in_the_url_saying_how_to_use_pgpass(tmp_path):
    url = f"postgresql+psycopg://wconv:{PASSWORD}@127.0.0.1:1/wconv"
    sweep = str(_sweep_file(tmp_path, "refused"))
    cluster = "local"
    no_slurm = {"PATH": str(Path(sys.executable).parent)}  # were the refusal missing, nothing could reach SLURM
    for command in (["submit", sweep, "--cluster", cluster], ["confirm", sweep, "--seeds", "2", "--alpha", "0.9",
                                                             "--cluster", cluster]):
        done = _wconv(*command, "--storage", url, "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, **no_slurm)
        assert done.returncode == 2, done.stderr[-2000:]
        (line,) = done.stderr.strip().splitlines()
        assert "~/.pgpass" in line and "postgresql+psycopg://wconv@127.0.0.1:1/wconv" in line
        assert PASSWORD not in done.stdout + done.stderr
    assert not (tmp_path / "runs").exists()


def test_a_dry_run_warns_of_the_password_and_writes_nothing(password_db, tmp_path):
    import psycopg

    dry = _wconv("submit", str(_sweep_file(tmp_path, "dry")), "--cluster", "local",
                 "--storage", password_db["url"], "--runs-dir", str(tmp_path / "runs"), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    warning = [line for line in dry.stdout.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "a real submission would be refused: storage" in warning[0]
    assert "~/.pgpass" in warning[0] and "array task → cell" in dry.stdout  # the script is still shown
    assert PASSWORD not in dry.stdout + dry.stderr
    assert not (tmp_path / "runs").exists()
    with psycopg.connect(**password_db["admin"]) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        assert "sweeps" not in tables or not conn.execute("SELECT 1 FROM sweeps WHERE name = 'dry'").fetchall()


def test_a_launcher_given_a_task_with_a_password_submits_and_writes_nothing(tmp_path):
    from launch.launcher import SubmitError, plan_tasks
    from launch.profile import load_profile
    from launch.slurm import SlurmLauncher
    from launch.spec import load_sweep

    url = f"postgresql+psycopg://wconv:{PASSWORD}@127.0.0.1:1/wconv"
    sweep = load_sweep(_sweep_file(tmp_path, "direct")).model_copy(update={"storage": url})
    launcher = SlurmLauncher(load_profile("local"), tmp_path / "slurm")
    with pytest.raises(SubmitError, match="~/.pgpass"):
        launcher.submit(sweep, plan_tasks(sweep, tmp_path / "runs"))
    assert not (tmp_path / "slurm").exists()
