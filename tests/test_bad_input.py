"""The bad-input catalogue: what a new user gets wrong, command by command and field kind by field kind.

Every case must end the same way: exit code 2, exactly one line on stderr naming the file, field or thing
and what to do, nothing on stdout, no traceback, no file created or changed (the case's folder, which is
also its working directory and so holds any ``results/``, is compared before and after), and no process
left behind. Most cases call ``launch.cli.main`` in-process (fast); those marked ``subprocess`` run the
installed ``wconv`` command, which also proves that nothing reaches the terminal around Python.

To add a command's cases, append ``Case`` rows to ``CASES`` (``V`` and ``field`` build those of commands
that read a sweep file, ``C`` the others). ``argv`` and ``says`` may use the placeholders ``{sweep}`` (the
case's sweep file), ``{db}`` (its database file, results.db), ``{url}`` (that database's SQLite URL) and
``{tmp}`` (its folder); ``sweep`` is the sweep file's content, ``db`` what sits at ``{db}``.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import psutil
import pytest
import yaml

from analysis.store import Store
from launch.cli import main

WCONV = Path(sys.executable).with_name("wconv")

SWEEP = {
    "name": "t",
    "task": "classification",
    "dataset": {"name": "digits"},
    "models": ["tiny_cnn"],
    "kernels": {3: [[0.5, 1.5]], 5: [[0.05, 1.5], [0.5, 1.5]]},
    "search": {"num_samples": 4},
    "scheduler": {"grace_period": 1},
    "training": {"epochs": 3},
    "storage": "{url}",
}
"""A valid sweep; each case breaks one thing. Its results go to the case's own database."""

@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    says: tuple[str, ...]
    """Substrings of the one stderr line: the thing named and what to do."""
    sweep: Any = "good"
    """"good" (SWEEP), a dict of dotted fields changed in SWEEP (value DELETE removes one), a raw str or bytes,
    "dir" (a folder), or None (no file)."""
    db: Optional[str] = None
    """None (no file), "empty", "text", "foreign" (a SQLite database wconv did not write), "wconv" (a results
    database without sweeps) or "dir"."""
    subprocess: bool = False


DELETE = object()


def V(*argv: str, says: str | tuple[str, ...], sweep: Any = "good", db: Optional[str] = None, id: str,
      sub: bool = False, command: str = "validate") -> Case:
    """A case of ``wconv COMMAND {sweep} ARGV…``."""
    return Case(id, (command, "{sweep}", *argv), (says,) if isinstance(says, str) else says, sweep, db, sub)


def field(path: str, value: Any, says: str, *, id: Optional[str] = None) -> Case:
    """A ``validate`` case: a sweep whose one field ``path`` is ``value``; the line must start with the file and
    hold ``says``."""
    shown = "DELETE" if value is DELETE else repr(value)
    return V(says=("{sweep}: " + says,), sweep={path: value}, id=id or f"{path}={shown}")


def C(*argv: str, says: str | tuple[str, ...], db: Optional[str] = None, id: str, sub: bool = False) -> Case:
    """A case of a command that takes no sweep file."""
    return Case(id, argv, (says,) if isinstance(says, str) else says, None, db, sub)


NAN, INF = float("nan"), float("inf")

CASES = [
    # -- the sweep file itself ---------------------------------------------------------------------
    V(sweep=None, says="{sweep}: cannot read the sweep file (No such file or directory); check the path",
      id="missing-file"),
    V(sweep="dir", says="{sweep}: is a directory; give the path of a sweep .yaml file", id="directory"),
    V(sweep="", says="{sweep}: the file is empty; write the sweep's fields", id="empty-file"),
    V(sweep=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", says="{sweep}: not a text file (byte 0 is not UTF-8)",
      id="binary-file", sub=True, command="run"),
    V(sweep="name: t\x00\n", says="{sweep}: not a text file (it holds NUL bytes)", id="nul-bytes"),
    V(sweep="# only a comment\n", says="{sweep}: the file holds no sweep; write its fields", id="only-comment"),
    V(sweep="- tiny_cnn\n- digits\n", says="{sweep}: the file must be a YAML mapping of sweep fields", id="a-list"),
    V(sweep="name: [unclosed\n", says=("{sweep}: line 2, column 1: not valid YAML", "fix the file"),
      id="yaml-syntax"),
    V(sweep="name: !!python/object/apply:os.system ['touch pwned']\n",
      says=("{sweep}: line 1, column 7: not valid YAML", "python/object/apply"), id="yaml-python-tag"),
    V(sweep="name: a\nname: b\n", says="{sweep}: line 2, column 1: not valid YAML (key 'name' appears twice; keep one)",
      id="repeated-key"),
    V(sweep="x: " + "y" * (2 << 20), says="{sweep}: is 2.0 MiB, not a sweep file", id="huge-file"),
    V(sweep="name: t\ttask: x\n", says="{sweep}: line 1, column", id="tab-in-yaml"),

    # -- top-level fields ------------------------------------------------------------------------
    field("colour", "blue", "colour: unknown field; expected one of ['name', 'task',"),
    field("models", DELETE, "models: missing; this field is required"),
    field("task", "segmentation", "task: Input should be 'classification' or 'denoising', got 'segmentation'"),
    field("name", "..", "name: '..' cannot name folders and database rows"),
    field("name", ".", "name: '.' cannot name folders and database rows"),
    field("name", "../escape", "name: '../escape' cannot name folders"),
    field("name", 7, "name: Input should be a valid string, got 7"),
    field("storage", "sqlite://results.db", "storage: results store 'sqlite://results.db' is not a SQLite URL"),
    field("workers", 0, "workers: Input should be greater than or equal to 1, got 0"),
    field("workers", 9, "workers (9) must be ≤ search.num_samples (4)"),
    field("workers", True, "workers: Input should be a valid integer, got True"),
    field("seeds", [], "seeds: List should have at least 1 item"),
    field("seeds", [1, 1], "seeds[1]: seed 1 is listed twice; list each seed once"),
    field("seeds", [-1], "seeds[0]: Input should be greater than or equal to 0, got -1"),
    field("seeds", "0", "seeds: Input should be a valid list, got '0'"),

    # -- kernels: α ranges -----------------------------------------------------------------------
    field("kernels.4", [[0.5, 1.5]], "kernels.4: kernel size must be odd and ≥ 3"),
    field("kernels.5", [[0.1, 1.5]], "kernels.5: needs 2 [low, high] range(s)"),
    field("kernels.5.1", [1.5, 0.4], "kernels.5[1]: high (0.4) must be > low (1.5); swap or widen them"),
    field("kernels.3.0", [-0.5, 1.5], "kernels.3[0]: low (-0.5) must be > 0"),
    field("kernels.3.0", [NAN, 1.5], "kernels.3[0][0]: Input should be a finite number, got nan"),
    field("kernels.3.0", [0.5, INF], "kernels.3[0][1]: Input should be a finite number, got inf"),
    field("kernels.3.0", [True, 1.5], "kernels.3[0][0]: Input should be a valid number, got True"),
    field("kernels.3.0", "0.5-1.5", "kernels.3[0]: Input should be a valid tuple, got '0.5-1.5'"),
    field("kernels", {}, "kernels: Dictionary should have at least 1 item"),

    # -- search, scheduler, resources ------------------------------------------------------------
    field("search.num_samples", 0, "search.num_samples: Input should be greater than or equal to 1"),
    field("search.num_samples", True, "search.num_samples: Input should be a valid integer, got True"),
    field("search.num_samples", 4.5, "search.num_samples: Input should be a valid integer, got 4.5"),
    field("search.metric", "val_psnr", "search.metric: 'val_psnr' is not a classification metric; expected one of"),
    field("search.mode", "maximise", "search.mode: Input should be 'min' or 'max'"),
    field("search.seed", -5, "search.seed: Input should be greater than or equal to 0"),
    field("search.max_concurrent", 0, "search.max_concurrent: Input should be greater than or equal to 1"),
    field("scheduler.type", "hyperband", "scheduler.type: Input should be 'asha' or 'fifo'"),
    field("scheduler.max_epochs", 7, "scheduler.max_epochs (7) must equal training.epochs (3)"),
    field("scheduler.grace_period", 9, "scheduler.grace_period (9) must be ≤ training.epochs (3); lower it"),
    field("scheduler.reduction_factor", 1, "scheduler.reduction_factor: Input should be greater than 1"),
    field("scheduler.reduction_factor", INF, "scheduler.reduction_factor: Input should be a finite number"),
    field("resources.cpus_per_trial", 0, "resources.cpus_per_trial: Input should be greater than 0"),
    field("resources.gpus_per_trial", NAN, "resources.gpus_per_trial: Input should be a finite number"),
    field("resources.cpus_per_trial", "all", "resources.cpus_per_trial: Input should be a valid number"),

    # -- training: every TrainingConfig field typed ---------------------------------------------
    field("training.epochs", True, "training.epochs: Input should be a valid integer, got True"),
    field("training.epochs", 2.5, "training.epochs: Input should be a valid integer, got 2.5"),
    field("training.epochs", 0, "training.epochs: Input should be greater than or equal to 1"),
    field("training.lr", NAN, "training.lr: Input should be a finite number, got nan"),
    field("training.lr", -INF, "training.lr: Input should be a finite number, got -inf"),
    field("training.lr", -0.1, "training.lr: Input should be greater than 0, got -0.1"),
    field("training.lr", "fast", "training.lr: Input should be a valid number, got 'fast'"),
    field("training.optimizer", "rmsprop", "training.optimizer: Input should be 'sgd' or 'adam', got 'rmsprop'"),
    field("training.betas", [0.9, 1.5], "training.betas[1]: Input should be less than 1, got 1.5"),
    field("training.betas", [0.9], "training.betas[1]: missing"),
    field("training.momentum", NAN, "training.momentum: Input should be a finite number"),
    field("training.patience", 0, "training.patience: Input should be greater than or equal to 1"),
    field("training.label_smoothing", 1.0, "training.label_smoothing: Input should be less than 1"),
    field("training.hflip", "maybe", "training.hflip: Input should be a valid boolean, got 'maybe'"),
    field("training.lrr", 0.1, "training.lrr: unknown field; expected one of ['epochs', 'batch_size',"),
    field("training.val_metrics", ["psnr"], "training.val_metrics: 'psnr' not classification metric(s)"),
    field("training", [1], "training: expected a mapping (field: value, …)"),
    field("dataset", "digits", "dataset: expected a mapping (field: value, …), got 'digits'"),

    # -- models and their options ------------------------------------------------------------------
    field("models", [], "models: List should have at least 1 item"),
    field("models", ["resnet9000"], "models[0]: unknown model 'resnet9000'; expected one of ["),
    field("models", ["tiny_denoiser"], "models[0]: 'tiny_denoiser' is a denoising model, but task is 'classification'"),
    field("models", [3], "models[0]: expected a model name or a mapping {name: …, options: {…}}, got 3"),
    field("models", ["tiny_cnn", "tiny_cnn"], "models[1]: 'tiny_cnn' is already models[0]"),
    field("models.0", {"name": "tiny_cnn", "options": {"widht": 2}},
          "models[0].options.widht: unknown option; expected one of ['channels', 'width']", id="option-typo"),
    field("models.0", {"name": "tiny_cnn", "options": {"width": "wide"}},
          "models[0].options.width: Input should be a valid number, got 'wide'", id="option-text-for-number"),
    field("models.0", {"name": "tiny_cnn", "options": {"channels": True}},
          "models[0].options.channels: Input should be a valid integer, got True", id="option-bool-for-int"),
    field("models.0", {"name": "tiny_cnn", "options": {"width": NAN}},
          "models[0].options.width: Input should be a finite number", id="option-nan"),
    field("models.0", {"name": "resnet56", "options": {"depth": 7}},
          "models[0].options: resnet56: depth must be 6n+2 ≥ 8 (20, 32, 44, 56, 110, …), got 7; change the options",
          id="option-refused-by-builder"),
    field("models.0", {"name": "tiny_cnn", "opts": {}}, "models[0].opts: unknown field; expected one of ['name', ",
          id="model-field-typo"),

    # -- the dataset and its options ---------------------------------------------------------------
    field("dataset", DELETE, "dataset: missing; this field is required"),
    field("dataset.name", "mnist", "dataset.name: unknown dataset 'mnist'; expected one of"),
    field("dataset.name", "natural", "dataset.name: 'natural' is a denoising dataset, but task is 'classification'"),
    field("dataset.root", 3, "dataset.root: Input should be a valid string, got 3"),
    field("dataset.options.noise_sigma", 0.1,
          "dataset.options.noise_sigma: the trial sets it from training.noise_sigma; set training.noise_sigma"),
    field("dataset.options.patch_size", 32, "dataset.options.patch_size: unknown option; expected one of ["),
    field("dataset.options.limit", 0, "dataset.options: limit must be a positive int or None, got 0"),
    field("dataset.options.limit", INF, "dataset.options.limit: Input should be a valid integer, got inf"),

    # -- --set ----------------------------------------------------------------------------------------
    V("--set", "a..b=1", says="{sweep}: --set 'a..b=1': 'a..b' has an empty name between dots", id="set-empty-part"),
    V("--set", "=3", says="{sweep}: --set '=3': expected FIELD=VALUE, e.g. training.epochs=2", id="set-no-field"),
    V("--set", "training.epochs", says="{sweep}: --set 'training.epochs': expected FIELD=VALUE", id="set-no-value"),
    V("--set", "models.x.name=y", says="{sweep}: --set models.x.name: models is a list; 'x' is not an index",
      id="set-not-an-index"),
    V("--set", "models.4.name=y", says="{sweep}: --set models.4.name: models has 1 element(s); index 4 is out of range",
      id="set-index-out-of-range"),
    V("--set", "kernels.3.0.0.0=1", says="{sweep}: --set kernels.3.0.0.0: kernels.3.0.0 is a float, not a mapping",
      id="set-into-a-number"),
    V("--set", "training.epochs=[1", says="{sweep}: --set training.epochs: value '[1' is not valid YAML",
      id="set-bad-yaml"),
    V("--set", "training.epochs=yes", says="{sweep}: training.epochs: Input should be a valid integer, got True",
      id="set-bool-for-number"),
    V("--set", "name=..", says="{sweep}: name: '..' cannot name folders", id="set-dotdot-name"),
    V("--set", "kernels.3.0.1=.nan", says="{sweep}: kernels.3[0][1]: Input should be a finite number", id="set-nan"),

    # -- plan: read-only, also of the database -------------------------------------------------------
    V(says="{sweep}: training.lr: Input should be a finite number", sweep={"training.lr": NAN}, command="plan",
      id="plan-nan"),
    V(says=("wconv plan: results store", "is an empty file, not a wconv results database"), db="empty",
      command="plan", id="plan-empty-db"),
    V(says=("wconv plan: ", "sqlite:///{db}", "not a wconv results database"), db="foreign", command="plan",
      id="plan-foreign-db", sub=True),
    V(says=("wconv plan: ", "sqlite:///{db}"), db="text", command="plan", id="plan-text-db"),
    V(says=("wconv plan: results store", "is a directory"), db="dir", command="plan", id="plan-dir-db"),

    # -- run: nothing starts --------------------------------------------------------------------------
    V("--num-cpus", "-1", says="wconv run: argument --num-cpus: -1 must be ≥ 1; see wconv run --help",
      command="run", id="run-negative-cpus"),
    V("--num-cpus", "0", says="wconv run: argument --num-cpus: 0 must be ≥ 1", command="run", id="run-zero-cpus"),
    V("--num-cpus", "all", says="wconv run: argument --num-cpus: 'all' is not an integer", command="run",
      id="run-text-cpus"),
    V(says="{sweep}: kernels.3[0][1]: Input should be a finite number", sweep={"kernels.3.0": [0.5, INF]},
      command="run", id="run-inf-alpha"),
    V(says="{sweep}: models[0].options.widht: unknown option", command="run", id="run-option-typo",
      sweep={"models.0": {"name": "tiny_cnn", "options": {"widht": 2}}}),
    V("--set", "kernels.3.0.0.0=1", says="{sweep}: --set kernels.3.0.0.0", command="run", id="run-bad-set"),
    V(says=("wconv run: ", "nowhere", "wconv data prepare cifar100"), command="run", id="run-dataset-missing",
      sweep={"dataset": {"name": "cifar100", "root": "{tmp}/nowhere"}}),
    V(says=("wconv run: resources.cpus_per_trial", "lower it"), command="run", id="run-too-many-cpus",
      sweep={"resources.cpus_per_trial": 100000}),
    V(says=("wconv run: ", "sqlite:///{db}"), db="text", command="run", id="run-text-db"),
    V(says=("wconv run: ", "sqlite:///{db}", "not a wconv results database"), db="foreign", command="run",
      id="run-foreign-db"),
    V("--storage", "nonsense://x", says=("wconv run: results store 'nonsense://x'", "not supported"),
      command="run", id="run-unknown-backend"),

    # -- best: read-only ---------------------------------------------------------------------------------
    C("best", "--storage", "{url}", says=("wconv best: no results yet at 'sqlite:///{db}'", "run a sweep first"),
      id="best-missing-db", sub=True),
    C("best", "--storage", "{url}", db="empty", says="wconv best: results store 'sqlite:///{db}' is an empty file",
      id="best-empty-db"),
    C("best", "--storage", "{url}", db="text", says=("wconv best: ", "sqlite:///{db}"), id="best-text-db"),
    C("best", "--storage", "{url}", db="foreign", says=("wconv best: results store 'sqlite:///{db}' is not a wconv "
                                                        "results database"), id="best-foreign-db"),
    C("best", "--storage", "{url}", db="dir", says="wconv best: results store 'sqlite:///{db}' is a directory",
      id="best-dir-db"),
    C("best", "--storage", "postgresql://me@host:port/db", says=("wconv best: argument --storage: results store "
                                                                  "'postgresql://me@host:port/db' is not a database URL",
                                                                  "use a file path, sqlite:///"), id="best-not-a-url"),
    C("best", "--storage", "{url}", "--kernel", "4", says="wconv best: argument --kernel: 4 is not a kernel size",
      id="best-even-kernel"),
    C("best", "--storage", "{url}", "--kernel", "three", says="wconv best: argument --kernel: 'three' is not an",
      id="best-text-kernel"),
    C("best", "--storage", "{url}", "--format", "xml", says="wconv best: argument --format: invalid choice: 'xml'",
      id="best-format"),

    # -- data ------------------------------------------------------------------------------------------
    C("data", "check", "cifar100", "--root", "{tmp}/nowhere", says=("nowhere", "wconv data prepare cifar100"),
      id="data-missing-root"),
    C("data", "check", "mnist", "--root", "{tmp}", says="wconv data: unknown dataset 'mnist': choose one of",
      id="data-unknown-dataset"),
    C("data", "check", "div2k", "--root", "{db}", db="text", says=("wconv data: ", "{db}"), id="data-root-is-a-file"),
    C("data", "fetch", "cifar100", "--root", "{tmp}", says="wconv data: argument action: invalid choice: 'fetch'",
      id="data-unknown-action"),
    C("data", "check", "cifar100", says="wconv data: the following arguments are required: --root",
      id="data-no-root"),

    # -- report, status, cancel: read the store, never create it ---------------------------------------------
    C("report", "t", "--storage", "{url}", says=("wconv report: no results yet at 'sqlite:///{db}'",),
      id="report-missing-db"),
    C("report", "t", "--storage", "{url}", db="foreign", says="wconv report: results store 'sqlite:///{db}' is not a",
      id="report-foreign-db"),
    C("report", "nope", "--storage", "{url}", db="wconv", says=("wconv report: ", "'nope'"),
      id="report-unknown-sweep"),
    C("status", "t", "--storage", "{url}", says="wconv status: no results yet at 'sqlite:///{db}'",
      id="status-missing-db"),
    C("status", "t", "--storage", "{url}", db="text", says=("wconv status: ", "sqlite:///{db}"), id="status-text-db"),
    C("status", "nope", "--storage", "{url}", db="wconv", says=("wconv status: no sweep 'nope'",),
      id="status-unknown-sweep"),
    C("cancel", "t", "--storage", "{url}", says=("wconv cancel: ", "sqlite:///{db}"), id="cancel-missing-db"),

    # -- submit and confirm: nothing submitted, nothing trained ---------------------------------------------
    V("--cluster", "{tmp}/nowhere.yaml", says="{tmp}/nowhere.yaml: cannot read the cluster profile", command="submit",
      id="submit-missing-profile"),
    V("--cluster", "{tmp}/nowhere.yaml", "--workers", "0", says="wconv submit: argument --workers: 0 must be ≥ 1",
      command="submit", id="submit-zero-workers"),
    V("--cluster", "{tmp}/nowhere.yaml", says="{sweep}: training.lr: Input should be a finite number",
      sweep={"training.lr": NAN}, command="submit", id="submit-nan"),
    V("--seeds", "1", says="wconv confirm: argument --seeds: 1 must be ≥ 2", command="confirm", id="confirm-one-seed"),
    V("--seeds", "3", "--alpha", "nan", says="wconv confirm: argument --alpha: 'nan': every coefficient must be a finite",
      command="confirm", id="confirm-nan-alpha"),
    V("--seeds", "3", says="{sweep}: models[0].options.widht: unknown option", command="confirm",
      sweep={"models.0": {"name": "tiny_cnn", "options": {"widht": 2}}}, id="confirm-option-typo"),
    V("--seeds", "3", says=("wconv confirm: no results yet at 'sqlite:///{db}'",), command="confirm",
      id="confirm-missing-db"),

    # -- the command line ---------------------------------------------------------------------------------
    C("frobnicate", says="wconv: argument command: invalid choice: 'frobnicate'", id="unknown-command"),
    C(says="wconv: the following arguments are required: command", id="no-command"),
    C("validate", says="wconv validate: the following arguments are required: sweep", id="validate-no-file"),

    # -- naming the store and the sweep: one normalising function, one line everywhere ----------------------
    V("--storage", "sqlite://rel.db", command="run", sub=True, id="run-two-slash-sqlite",
      says=("wconv run: argument --storage: results store 'sqlite://rel.db' is not a SQLite URL", "sqlite:///rel.db")),
    *[C(*argv, "--storage", "sqlite://rel.db", id=f"{argv[0]}-two-slash-sqlite",
        says=(f"wconv {argv[0]}: argument --storage: results store 'sqlite://rel.db' is not a SQLite URL",))
      for argv in (("best",), ("report", "t"), ("status", "t"), ("cancel", "t"), ("confirm", "t", "--seeds", "2"),
                   ("submit", "s.yaml", "--cluster", "c.yaml"))],
    C("best", says="wconv best: no results yet at 'sqlite:///{tmp}/results/wconv.db'", id="best-names-the-absolute-path"),
    C("best", "--storage", "results.db", says="wconv best: no results yet at 'sqlite:///{tmp}/results.db'",
      id="best-plain-path-missing"),
    C("confirm", "nope", "--seeds", "3", "--storage", "{db}", db="wconv", id="confirm-unrecorded-name",
      says=("wconv confirm: 'nope' is neither a sweep file nor a sweep recorded in sqlite:///{db}",
            "the sweeps it records: none yet")),
    C("confirm", "nope", "--seeds", "3", "--storage", "{db}", id="confirm-name-no-db",
      says="wconv confirm: no results yet at 'sqlite:///{db}'"),
    # -- data prepare --from: refused before anything is made ---------------------------------------------
    C("data", "prepare", "cifar100", "--root", "{tmp}/data", "--from", "{tmp}/nowhere.tar.gz",
      says="wconv data: --from {tmp}/nowhere.tar.gz: no such file or folder", id="data-from-missing"),
    C("data", "prepare", "div2k", "--root", "{tmp}/data", "--from", "{db}", db="text",
      says="wconv data: --from {db}: not an archive of div2k (its archives are", id="data-from-not-an-archive"),
    C("data", "check", "cifar100", "--root", "{tmp}", "--from", "{tmp}", says="wconv data: --from gives archives to",
      id="data-check-from"),

    # -- samplers and fused groups ------------------------------------------------------------------------
    field("search.sampler", "bayes", "search.sampler: Input should be 'tpe', 'random' or 'grid', got 'bayes'"),
    field("search.grid_points", 4, "search.grid_points: only sampler grid uses it (search.sampler is tpe); drop it "
                                   "or set search.sampler: grid"),
    V(says="{sweep}: search.grid_points: only sampler grid uses it (search.sampler is random)",
      sweep={"search.sampler": "random", "search.grid_points": 3}, id="grid-points-with-random"),
    V(says="{sweep}: search.grid_points: Input should be greater than or equal to 2, got 1",
      sweep={"kernels": {3: [[0.5, 1.5]]}, "search.sampler": "grid", "search.grid_points": 1}, id="grid-points-1"),
    V(says="{sweep}: search.grid_points: Input should be a valid integer, got True",
      sweep={"kernels": {3: [[0.5, 1.5]]}, "search.sampler": "grid", "search.grid_points": True},
      id="grid-points-bool"),
    V(says="{sweep}: search.grid_points: missing; sampler grid needs the number of values per free coefficient",
      sweep={"kernels": {3: [[0.5, 1.5]]}, "search.sampler": "grid"}, id="grid-without-points"),
    V(says=("{sweep}: search.num_samples (4) contradicts the grid", "drop num_samples or set it to 2"),
      sweep={"kernels": {3: [[0.5, 1.5]]}, "search.sampler": "grid", "search.grid_points": 3},
      id="grid-num-samples-contradicts"),
    V(says=("{sweep}: search.sampler: grid gives the kernel sizes different numbers of sampled trials",
            "put each kernel size in its own sweep"),
      sweep={"search.sampler": "grid", "search.grid_points": 3, "search.num_samples": DELETE},
      id="grid-kernel-sizes-differ"),
    V(says="{sweep}: search.grid_points: 100 values over the 3 coefficient(s) of kernels.7 make 1000000 trials",
      sweep={"kernels": {7: [[0.5, 1.5]] * 3}, "search.sampler": "grid", "search.grid_points": 100},
      id="grid-too-large", command="plan"),
    field("resources.group_size", 0, "resources.group_size: Input should be greater than or equal to 1, got 0"),
    field("resources.group_size", -4, "resources.group_size: Input should be greater than or equal to 1, got -4"),
    field("resources.group_size", 2.5, "resources.group_size: Input should be a valid integer, got 2.5"),
    field("resources.group_size", 4.0, "resources.group_size: Input should be a valid integer, got 4.0"),
    field("resources.group_size", True, "resources.group_size: Input should be a valid integer, got True"),
    field("resources.group_size", "4", "resources.group_size: Input should be a valid integer, got '4'"),
    # -- confirm's control arms: refused before any store is opened (the model without weighted convs: test_controls)
    V("--seeds", "3", "--control", "init-scale,init-shap", command="confirm", id="confirm-unknown-control",
      says=("wconv confirm: argument --control: unknown control(s) 'init-shap'", "init-scale, init-shape, lr-shape")),
    V("--seeds", "3", "--control", "lr-shape", command="confirm", id="confirm-lr-shape-adam-decay",
      sweep={"training.optimizer": "adam"},
      says=("wconv confirm: --control lr-shape: under Adam the derivation holds without weight decay only",
            "the controls that can run here: init-scale, init-shape")),
]


def _fill(text: str, tmp: Path) -> str:
    db = tmp / "results.db"
    return (text.replace("{sweep}", str(tmp / "sweep.yaml")).replace("{url}", f"sqlite:///{db}")
            .replace("{db}", str(db)).replace("{tmp}", str(tmp)))


def _sweep_text(case: Case, tmp: Path) -> str | bytes | None:
    if case.sweep is None or case.sweep == "dir" or isinstance(case.sweep, bytes):
        return case.sweep
    if isinstance(case.sweep, str) and case.sweep != "good":
        return case.sweep
    data = yaml.safe_load(yaml.safe_dump(SWEEP))
    for dotted, value in (case.sweep if isinstance(case.sweep, dict) else {}).items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            key = int(part) if part.isdigit() else part
            node = node[key] if isinstance(node, list) else node.setdefault(key, {})
        key = int(last) if last.isdigit() else last
        if value is DELETE:
            del node[key]
        else:
            node[key] = value
    return _fill(yaml.safe_dump(data, allow_unicode=True), tmp)


def _prepare(case: Case, tmp: Path) -> list[str]:
    sweep = _sweep_text(case, tmp)
    path = tmp / "sweep.yaml"
    if sweep == "dir":
        path.mkdir()
    elif isinstance(sweep, bytes):
        path.write_bytes(sweep)
    elif sweep is not None:
        path.write_text(sweep)
    db = tmp / "results.db"
    if case.db == "empty":
        db.touch()
    elif case.db == "text":
        db.write_text("these are my notes, not a database\n")
    elif case.db == "dir":
        db.mkdir()
    elif case.db == "wconv":
        Store(f"sqlite:///{db}").close()
    elif case.db == "foreign":
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
        conn.close()
    return [_fill(a, tmp) for a in case.argv]


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[str(path.relative_to(root))] = (digest, stat.st_mtime_ns, stat.st_mode)
    return out


def _one_line(err: str, out: str, says: tuple[str, ...], tmp: Path) -> None:
    assert "Traceback" not in err + out, err
    assert out == "", f"nothing on stdout for a refused command, got {out!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"one line on stderr, got {len(lines)}: {err}"
    for part in says:
        assert _fill(part, tmp) in lines[0], f"{_fill(part, tmp)!r} not in {lines[0]!r}"


@pytest.fixture
def case_dir(tmp_path, monkeypatch):
    folder = tmp_path / "case"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("WCONV_DATA", raising=False)
    return folder


@pytest.mark.parametrize("case", [c for c in CASES if not c.subprocess], ids=lambda c: c.id)
def test_refused_in_process(case, case_dir, capfd):
    argv = _prepare(case, case_dir)
    before = _snapshot(case_dir)
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    capfd.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out, err = capfd.readouterr()
    assert code == 2, err
    _one_line(err, out, case.says, case_dir)
    assert _snapshot(case_dir) == before, "a refused command must not create or change a file"
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= children, "a process was left behind"


SUBPROCESS = [c for c in CASES if c.subprocess]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The subprocess cases, started together (each pays the interpreter's start and imports)."""
    env = {k: v for k, v in os.environ.items() if k != "WCONV_DATA"}
    runs = {}
    for case in SUBPROCESS:
        folder = tmp_path_factory.mktemp(case.id)
        argv = _prepare(case, folder)
        before = _snapshot(folder)
        proc = subprocess.Popen([str(WCONV), *argv], cwd=folder, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        runs[case.id] = (proc, folder, before)
    yield runs
    for proc, _, _ in runs.values():
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("case", SUBPROCESS, ids=lambda c: c.id)
def test_refused_by_the_installed_command(case, launched):
    proc, folder, before = launched[case.id]
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    _one_line(err, out, case.says, folder)
    assert _snapshot(folder) == before, "a refused command must not create or change a file"
    left = [p for p in psutil.process_iter(["pid"]) if _group(p) == proc.pid]
    assert not left, f"processes left behind: {left}"


def _group(p: psutil.Process) -> Optional[int]:
    try:
        return os.getpgid(p.pid)
    except (ProcessLookupError, PermissionError):
        return None


def test_the_catalogue_covers_every_command_and_is_large_enough():
    commands = {c.argv[0] for c in CASES if c.argv}
    assert {"validate", "plan", "run", "best", "data", "report", "status", "cancel", "submit", "confirm"} <= commands
    assert len(CASES) >= 60 and sum(c.subprocess for c in CASES) >= 3
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


def test_read_only_commands_create_nothing_for_a_good_sweep(case_dir, capfd):
    """The other side of the catalogue: a valid sweep validates and plans without a database or results/."""
    argv = _prepare(Case("good", ("plan", "{sweep}"), ()), case_dir)
    before = _snapshot(case_dir)
    assert main(["validate", *argv[1:]]) == 0
    assert main(argv) == 0
    assert "no timing yet" in capfd.readouterr().out
    assert _snapshot(case_dir) == before
