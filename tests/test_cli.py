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
