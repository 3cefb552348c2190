"""The thin CLI: data staging checks and queries answer in one line, with exit code 2 for user errors."""

from __future__ import annotations

from analysis.store import Store
from launch.cli import main
from official_formats import write_cifar100, write_div2k


def test_data_check_names_the_missing_folder_and_the_fix(tmp_path, capsys):
    assert main(["data", "check", "cifar100", "--root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "nowhere" in err and "wconv data prepare cifar100" in err


def test_data_check_rejects_files_whose_checksums_are_not_the_official_ones(tmp_path, capsys):
    write_cifar100(tmp_path)
    assert main(["data", "check", "cifar100", "--root", str(tmp_path)]) == 2
    assert "md5" in capsys.readouterr().err


def test_data_check_reports_a_truncated_png(tmp_path, capsys):
    write_div2k(tmp_path)
    png = sorted((tmp_path / "DIV2K_train_HR").glob("*.png"))[0]
    png.write_bytes(png.read_bytes()[:100])
    assert main(["data", "check", "div2k", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "DIV2K" in err and len(err.strip().splitlines()) == 1


def test_best_on_a_database_without_finished_cells_says_so_and_changes_nothing(tmp_path, capsys):
    db = tmp_path / "x.db"
    Store(f"sqlite:///{db}").close()
    before = db.read_bytes()
    assert main(["best", "--storage", f"sqlite:///{db}"]) == 0
    assert "no finished cell" in capsys.readouterr().out
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]


def test_best_on_a_missing_database_creates_none(tmp_path, capsys):
    assert main(["best", "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "no results yet at" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_unreachable_database_is_a_user_error(capsys):
    assert main(["best", "--storage", "postgresql+psycopg://nobody:secret@127.0.0.1:1/none"]) == 2
    err = capsys.readouterr().err
    assert "secret" not in err and len(err.strip().splitlines()) == 1


# -- day one: naming a sweep, naming a store, every option explained ------------------------------------


def _record(store, sweep="acc", *, trials=(("b", [1.0], True, "completed", 0.90), ("t1", [0.8], False, "completed",
                                                                                    0.95))):
    store.record_sweep(sweep, task="classification", metric="val_acc", mode="max",
                       spec={"search": {"num_samples": 4}})
    for trial_id, alpha, baseline, status, value in trials:
        store.record_trial(sweep, trial_id, cell="tiny_cnn-k3-s0", model="tiny_cnn", kernel_size=3, seed=0,
                           alpha=alpha, baseline=baseline, status=status,
                           metrics={} if value is None else {"val_acc": value})


def test_every_option_of_every_subcommand_has_a_help_line():
    import argparse

    from launch.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [f"wconv {name} {action.dest}" for name, p in sub.choices.items() for action in p._actions
               if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()]
    assert not missing, f"options without a help line: {missing}"
    assert {c.dest for c in sub._choices_actions} == set(sub.choices), "every subcommand has a help line"


def test_best_takes_the_sweep_as_report_and_status_do(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    with Store(db) as store:
        _record(store, "acc")
        _record(store, "other")
    assert main(["best", "acc", "--storage", db, "--format", "json"]) == 0
    positional = capsys.readouterr().out
    assert main(["best", "--sweep", "acc", "--storage", db, "--format", "json"]) == 0
    assert capsys.readouterr().out == positional and '"other"' not in positional and '"acc"' in positional
    assert main(["best", "acc", "--sweep", "other", "--storage", db]) == 2
    assert "give one" in capsys.readouterr().err


def test_best_answers_a_database_where_one_sweep_has_no_finished_trial(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    with Store(db) as store:
        _record(store, "acc")
        _record(store, "early", trials=(("b", [1.0], True, "running", None), ("t1", [0.7], False, "running", None)))
    for by in ("cell", "model"):
        assert main(["best", "--by", by, "--storage", db]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert "0.80" in out and "no finished trial yet (2 running)" in out


def test_status_of_a_sweep_run_locally_shows_its_cells_even_while_it_runs(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    with Store(db) as store:
        _record(store, "acc", trials=(("b", [1.0], True, "completed", 0.90), ("t1", [0.8], False, "completed", 0.95),
                                      ("t2", [0.6], False, "running", None)))
    assert main(["status", "acc", "--storage", db]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "not submitted to SLURM" in out and "array task" not in out
    (row,) = [line for line in out.splitlines() if line.startswith("tiny_cnn-k3-s0")]
    assert row.split()[1:5] == ["2/5", "1", "0.80", "0.95"], row


def test_a_plain_path_names_a_sqlite_file_for_every_command(tmp_path, monkeypatch, capsys):
    from launch.cli import build_parser

    monkeypatch.chdir(tmp_path)
    with Store(f"sqlite:///{tmp_path / 'rel.db'}") as store:
        _record(store, "acc")
    for given in ("rel.db", "./rel.db", "sqlite:///rel.db", str(tmp_path / "rel.db")):
        assert main(["best", "acc", "--storage", given, "--format", "json"]) == 0, capsys.readouterr().err
        assert '"acc"' in capsys.readouterr().out
    parser = build_parser()
    for argv in (["run", "s.yaml"], ["submit", "s.yaml", "--cluster", "c.yaml"], ["confirm", "s", "--seeds", "2"],
                 ["best"], ["report", "acc"], ["status", "acc"], ["cancel", "acc"]):
        args = parser.parse_args([*argv, "--storage", "rel.db"])
        assert args.storage == f"sqlite:///{tmp_path / 'rel.db'}", argv


def test_messages_name_the_store_by_its_absolute_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["best"]) == 2  # the default, sqlite:///results/wconv.db, relative to here
    assert f"'sqlite:///{tmp_path}/results/wconv.db'" in capsys.readouterr().err
    assert main(["best", "--storage", "postgresql+psycopg://me:secret@127.0.0.1:1/db"]) == 2
    err = capsys.readouterr().err
    assert "secret" not in err and "me:***@127.0.0.1:1/db" in err


def test_confirm_takes_the_name_of_a_sweep_the_store_recorded(tmp_path, capsys):
    from launch.cell import prepare_sweep
    from launch.confirm import find_sweep
    from launch.spec import load_sweep

    db = f"sqlite:///{tmp_path / 'x.db'}"
    sweep = load_sweep("sweeps/smoke.yaml").model_copy(update={"storage": db})
    prepared, _ = prepare_sweep(sweep, tmp_path / "runs")
    found = find_sweep("smoke", [], db)
    assert found == prepared
    assert find_sweep("smoke", ["training.epochs=2"], db).training_config().epochs == 2
    assert main(["confirm", "nope", "--seeds", "3", "--storage", db]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'nope'" in err and "the sweeps it records: smoke" in err
