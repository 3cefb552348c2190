"""Cluster profiles: the shipped ones load and become the sbatch options their cluster expects; a bad one is
refused with one line per problem naming the file and the field, and the CLI exits 2 on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launch.profile import ProfileError, load_profile

REPO = Path(__file__).resolve().parent.parent
LEONARDO = REPO / "launch" / "profiles" / "leonardo.yaml"
LOCAL = REPO / "launch" / "profiles" / "local.yaml"

MINIMAL = {"name": "mini", "partition": "gpu", "gpus_per_node": 2, "cpus_per_node": 8, "timeout_min": 60}


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def _problems(tmp_path: Path, data, overrides=None) -> list[str]:
    path = _write(tmp_path, data)
    with pytest.raises(ProfileError) as err:
        load_profile(path, overrides)
    lines = str(err.value).splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    return [line.removeprefix(f"{path}: ") for line in lines]


def test_shipped_profiles_load():
    leonardo, local = load_profile(LEONARDO), load_profile(LOCAL)
    assert (leonardo.partition, leonardo.gpus_per_node, leonardo.cpus_per_node) == ("boost_usr_prod", 4, 32)
    assert leonardo.account_required and leonardo.account is None
    assert local.single_node and local.account == "wconv"


def test_leonardo_profile_becomes_the_sbatch_options_of_a_booster_node(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    executor = load_profile(LEONARDO).executor(tmp_path / "%j", account="IscrC_demo")._executor
    script = _make_sbatch_string(command="true", folder=executor.folder, map_count=12, **executor.parameters)
    for option in ("--partition=boost_usr_prod", "--qos=normal", "--account=IscrC_demo", "--gpus-per-node=4",
                   "--cpus-per-task=32", "--ntasks-per-node=1", "--nodes=1", "--mem=480G", "--time=1440",
                   "--signal=USR2@120", "--requeue", "--array=0-11%12"):
        assert f"#SBATCH {option}\n" in script, option
    assert "export HF_HUB_OFFLINE=1\n" in script
    assert executor.max_num_timeout == 20


def test_account_comes_from_the_argument_then_the_file_then_the_environment(monkeypatch, tmp_path):
    leonardo = load_profile(LEONARDO)
    monkeypatch.delenv("WCONV_ACCOUNT", raising=False)
    with pytest.raises(ProfileError, match=r"leonardo.yaml: account: .*--account NAME or set \$WCONV_ACCOUNT"):
        leonardo.executor_parameters()
    monkeypatch.setenv("WCONV_ACCOUNT", "from_env")
    assert leonardo.executor_parameters()["slurm_account"] == "from_env"
    assert leonardo.executor_parameters(account="given")["slurm_account"] == "given"
    in_file = load_profile(_write(tmp_path, {**MINIMAL, "account": "in_file", "account_required": True}))
    assert in_file.executor_parameters()["slurm_account"] == "in_file"


def test_optional_account_is_left_out_when_nobody_gives_one(monkeypatch, tmp_path):
    monkeypatch.delenv("WCONV_ACCOUNT", raising=False)
    params = load_profile(_write(tmp_path, MINIMAL)).executor_parameters()
    assert "slurm_account" not in params and "slurm_qos" not in params
    assert params["slurm_additional_parameters"] == {"requeue": True}


def test_unknown_field_is_named_with_the_fields_expected(tmp_path):
    [line] = _problems(tmp_path, {**MINIMAL, "gpus": 4})
    assert line.startswith("gpus: unknown field; expected one of [") and "'gpus_per_node'" in line


@pytest.mark.parametrize("field, value, says", [
    ("gpus_per_node", "4", "gpus_per_node: Input should be a valid integer, got '4'"),
    ("cpus_per_node", 8.0, "cpus_per_node: Input should be a valid integer, got 8.0"),
    ("requeue", "yes please", "requeue: Input should be a valid boolean, got 'yes please'"),
    ("gpus_per_node", -1, "gpus_per_node: Input should be greater than or equal to 0, got -1"),
    ("cpus_per_node", 0, "cpus_per_node: Input should be greater than or equal to 1, got 0"),
    ("timeout_min", 0, "timeout_min: Input should be greater than or equal to 1, got 0"),
    ("nodes", 2, "nodes: must be 1, got 2"),
    ("mem", "480GB", "mem: '480GB' is not an sbatch memory size"),
    ("env", {"HF_HUB_OFFLINE": 1}, "env.HF_HUB_OFFLINE: Input should be a valid string, got 1"),
    ("env", {"NOT-A-NAME": "1"}, "env: ['NOT-A-NAME'] are not shell variable names"),
    ("setup", "module load python", "setup: Input should be a valid list, got 'module load python'"),
    ("qos_max_timeout_min", {"dbg": 0}, "qos_max_timeout_min.dbg: Input should be greater than 0, got 0"),
])  # fmt: skip
def test_bad_value_is_one_line_naming_the_field(tmp_path, field, value, says):
    [line] = _problems(tmp_path, {**MINIMAL, field: value})
    assert line.startswith(says), line


def test_missing_required_fields_are_each_named(tmp_path):
    lines = _problems(tmp_path, {"name": "x", "partition": "gpu"})
    assert lines == [f"{f}: missing; this field is required" for f in ("gpus_per_node", "cpus_per_node", "timeout_min")]


def test_time_limit_longer_than_the_qos_or_partition_allows_is_refused(tmp_path):
    limits = {**MINIMAL, "timeout_min": 1440, "max_timeout_min": 1440, "qos_max_timeout_min": {"dbg": 30}}
    assert load_profile(_write(tmp_path, limits)).timeout_min == 1440
    [qos] = _problems(tmp_path, limits, ["qos=dbg"])
    assert qos.startswith("timeout_min: 1440 is more than QOS dbg's limit (30, qos_max_timeout_min.dbg)")
    assert load_profile(_write(tmp_path, limits), ["qos=dbg", "timeout_min=30"]).qos == "dbg"
    [partition] = _problems(tmp_path, limits, ["timeout_min=2000"])
    assert partition.startswith("timeout_min: 2000 is more than partition gpu's limit (1440, max_timeout_min)")


def test_signal_delay_must_leave_the_task_time_to_run(tmp_path):
    [line] = _problems(tmp_path, {**MINIMAL, "timeout_min": 2, "signal_delay_s": 120})
    assert line.startswith("signal_delay_s: 120 s is not shorter than timeout_min (2 min)")


def test_sbatch_may_not_set_again_what_a_field_sets(tmp_path):
    lines = _problems(tmp_path, {**MINIMAL, "sbatch": {"partition": "other", "t": 10, "exclusive": True}})
    assert lines == ["sbatch.partition: set it with the profile field 'partition' instead",
                     "sbatch.t: set it with the profile field 'timeout_min' instead"]


def test_several_problems_give_one_line_each(tmp_path):
    lines = _problems(tmp_path, {**MINIMAL, "gpus_per_node": -4, "cpus_per_node": "all", "colour": "blue"})
    assert [line.split(":")[0] for line in lines] == ["gpus_per_node", "cpus_per_node", "colour"]


@pytest.mark.parametrize("text, says", [
    ("- just\n- a list\n", "the file must be a YAML mapping of profile fields"),
    ("name: [unclosed\n", "line 2, column 1: not valid YAML"),
    ("# nothing but a comment\n", "the file holds no profile"),
])  # fmt: skip
def test_a_file_that_is_not_a_profile_is_one_line(tmp_path, text, says):
    [line] = _problems(tmp_path, text)
    assert line.startswith(says), line


def test_missing_file_and_bad_override_are_one_line(tmp_path):
    with pytest.raises(ProfileError, match=r"nowhere.yaml: cannot read the cluster profile \(No such file"):
        load_profile(tmp_path / "nowhere.yaml")
    [line] = _problems(tmp_path, MINIMAL, ["timeout_min"])
    assert line == "--set 'timeout_min': expected FIELD=VALUE, e.g. timeout_min=30"


def test_overrides_reach_mappings_and_are_validated(tmp_path):
    profile = load_profile(_write(tmp_path, MINIMAL), ["env.HF_HUB_OFFLINE='1'", "sbatch.exclusive=true"])
    assert profile.env == {"HF_HUB_OFFLINE": "1"} and profile.sbatch == {"exclusive": True}
    [line] = _problems(tmp_path, MINIMAL, ["gpus_per_node=many"])
    assert line == "gpus_per_node: Input should be a valid integer, got 'many'"


def test_node_local_paths_are_found_through_variables(monkeypatch):
    scratch, local = Path("/leonardo_work/IscrC_demo"), Path("/scratch_local/job42")  # need not exist
    monkeypatch.setenv("TMPDIR", str(local))
    monkeypatch.setenv("WORK", str(scratch))
    monkeypatch.delenv("DRES", raising=False)
    leonardo = load_profile(LEONARDO)
    assert leonardo.node_local_path("/tmp/runs") == "/tmp"
    assert leonardo.node_local_path(local / "results.db") == "$TMPDIR"
    assert leonardo.node_local_path(scratch / "runs") is None
    assert leonardo.shared_path(scratch / "runs")
    assert not leonardo.shared_path("/opt/elsewhere")
    assert load_profile(LOCAL).node_local_path("/tmp/runs") is None  # one machine: /tmp is shared


def test_cli_exits_2_with_the_profile_problem_and_no_traceback(tmp_path, capsys):
    from launch.cli import main

    bad = _write(tmp_path, {**MINIMAL, "gpus_per_node": "four"})
    assert main(["submit", str(REPO / "sweeps" / "smoke.yaml"), "--cluster", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "gpus_per_node: Input should be a valid integer, got 'four'" in err and "Traceback" not in err



# --- bundled profiles, named from any folder (issue 17) -----------------------------------------------------------


def _submit(cluster: str, cwd: Path) -> subprocess.CompletedProcess:
    """`wconv submit --dry-run` from ``cwd``, a folder outside the repository (``slurm/`` means nothing there)."""
    return subprocess.run([sys.executable, "-m", "launch.cli", "submit", str(REPO / "sweeps" / "smoke.yaml"),
                           "--cluster", cluster, "--account", "IscrC_TEST", "--dry-run",
                           "--storage", f"sqlite:///{cwd / 'nowhere.db'}", "--runs-dir", str(cwd / "runs")],
                          cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_a_bundled_profile_is_named_from_a_folder_outside_the_repository(tmp_path):
    assert not tmp_path.is_relative_to(REPO)
    done = _submit("leonardo", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "#SBATCH --partition=boost_usr_prod" in done.stdout and "#SBATCH --gpus-per-node=4" in done.stdout
    assert not (tmp_path / "nowhere.db").exists()  # a dry run writes nothing


def test_a_profile_of_ones_own_is_still_a_path(tmp_path):
    mine = yaml.safe_load(LEONARDO.read_text())
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({**mine, "partition": "my_partition"}))
    done = _submit("mine.yaml", tmp_path)  # relative to the folder the user is in
    assert done.returncode == 0, done.stderr[-2000:]
    assert "#SBATCH --partition=my_partition" in done.stdout


@pytest.mark.parametrize("cluster, says", [
    ("leonard", "leonard: not a bundled cluster profile (those are leonardo, local); name one of them or give the "
                "path of a profile YAML file"),
    ("slurm/leonardo.yaml", "slurm/leonardo.yaml: cannot read the cluster profile (No such file or directory); check "
                            "the path, or name a bundled profile: leonardo, local"),
])
def test_an_unknown_profile_gets_one_line_naming_the_bundled_ones(tmp_path, cluster, says):
    done = _submit(cluster, tmp_path)
    assert done.returncode == 2 and done.stderr.splitlines() == [says], done.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_the_bundled_profiles_ship_in_the_wheel_and_nowhere_else(tmp_path):
    import shutil
    import zipfile

    from launch.profile import bundled_profiles

    assert bundled_profiles() == {"leonardo": LEONARDO, "local": LOCAL}
    source = tmp_path / "src"  # a copy: building in the repository would leave build/ and *.egg-info there
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("wconv", "launch", "analysis"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
                           "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"launch/profiles/leonardo.yaml", "launch/profiles/local.yaml"} <= set(names), names
    copies = [p for p in REPO.rglob("*.yaml") if p.name in ("leonardo.yaml", "local.yaml") and ".git" not in p.parts
              and ".venv" not in p.parts]
    assert sorted(copies) == [LEONARDO, LOCAL]
