"""``wconv data prepare`` end to end: generated archives in the official layout (cifar-100-python.tar.gz,
DIV2K_train_HR.zip, DIV2K_valid_HR.zip; real pickles and PNGs) served over HTTP from 127.0.0.1, and given
with ``--from``; damaged, cut-short and misnamed archives refused in one line with nothing half-extracted.

The official URLs, md5s and image counts are replaced through the test-only ``WCONV_TEST_DATA_SOURCES``
(``wconv.data.stage``). The ``wconv`` commands also run behind a proxy that refuses every connection, with
only 127.0.0.1 exempt: nothing can be downloaded from anywhere else, whatever the code under test asks for. The
in-process ones are sent only to 127.0.0.1, by the sources file.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from launch.cli import main
from official_formats import write_cifar100_archive, write_div2k, write_div2k_archives
from wconv.data import check, load

WCONV = Path(sys.executable).with_name("wconv")
COUNTS = {"DIV2K_train_HR": 3, "DIV2K_valid_HR": 2}
ARCHIVES = {"cifar100": ["cifar-100-python.tar.gz"], "div2k": ["DIV2K_train_HR.zip", "DIV2K_valid_HR.zip"]}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the archives folder; ``/cut/NAME`` promises NAME's full length, sends half and hangs up."""

    def do_GET(self):
        self.server.paths.append(self.path)
        if self.path.startswith("/cut/"):
            data = (Path(self.directory) / self.path.removeprefix("/cut/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # torchvision's download first asks for the file only to follow redirects, and hangs up on the reply
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _members(archive: Path) -> dict[str, bytes]:
    """The files an archive holds, by path."""
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            return {n: z.read(n) for n in z.namelist() if not n.endswith("/")}
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else "dir" for p in sorted(root.rglob("*"))
            if p.is_file() or not any(p.iterdir())}


@dataclass
class Site:
    """The generated official archives, the 127.0.0.1 server serving them and the test-only sources file."""

    archives: Path
    server: http.server.ThreadingHTTPServer
    sources: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{path}"

    def point(self, dataset: str, archive: str, url: str) -> None:
        """Make the sources file send ``archive`` of ``dataset`` to ``url``."""
        sources = json.loads(self.sources.read_text())
        sources[dataset]["archives"][archive]["url"] = url
        self.sources.write_text(json.dumps(sources))

    def expected(self, dataset: str) -> dict[str, bytes]:
        """What root holds once ``dataset`` is prepared: exactly the archives' files."""
        return {k: v for a in ARCHIVES[dataset] for k, v in _members(self.archives / a).items()}


@pytest.fixture
def site(tmp_path, monkeypatch) -> Site:
    archives = tmp_path / "archives"
    archives.mkdir()
    cifar = write_cifar100_archive(archives, n_train=20, n_test=5)
    write_div2k_archives(archives, n_train=COUNTS["DIV2K_train_HR"], n_valid=COUNTS["DIV2K_valid_HR"], size=(40, 32))
    server = _Server(("127.0.0.1", 0), functools.partial(_Handler, directory=str(archives)))
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    site = Site(archives, server, tmp_path / "sources.json")
    files = {Path(name).name: _md5(data) for name, data in _members(cifar).items()}
    site.sources.write_text(json.dumps({
        "cifar100": {"archives": {cifar.name: {"url": site.url(cifar.name), "md5": _md5(cifar.read_bytes())}},
                     "files": files},
        "div2k": {"archives": {f"{n}.zip": {"url": site.url(f"{n}.zip")} for n in COUNTS}, "counts": COUNTS},
    }))
    monkeypatch.setenv("WCONV_TEST_DATA_SOURCES", str(site.sources))
    for var in ("no_proxy", "NO_PROXY"):  # 127.0.0.1 directly, whatever proxy this machine has
        monkeypatch.setenv(var, "127.0.0.1")
    yield site
    server.shutdown()
    server.server_close()
    thread.join()


def wconv(*args: str | Path) -> subprocess.CompletedProcess:
    """``wconv data ARGS`` as a user runs it, behind a proxy that refuses every connection but to 127.0.0.1 (set
    for the child only: urllib keeps the proxies it first saw for the rest of a process)."""
    dead = f"http://127.0.0.1:{_closed_port()}"
    guard = {"http_proxy": dead, "https_proxy": dead, "no_proxy": "127.0.0.1", "TQDM_DISABLE": "1"}
    env = {**os.environ, **guard, **{k.upper(): v for k, v in guard.items()}}
    return subprocess.run([str(WCONV), "data", *map(str, args)], capture_output=True, text=True, timeout=900,
                          env=env)


def refused(capfd, *args: str | Path) -> str:
    """Run ``wconv data ARGS`` in this process; assert exit code 2 and one line on stderr; return it."""
    code = main(["data", *map(str, args)])
    out, err = capfd.readouterr()
    assert "Traceback" not in err
    lines = [line for line in re.split(r"[\r\n]+", err) if line.strip() and "B/s]" not in line]  # tqdm's bars
    assert code == 2 and out == "" and len(lines) == 1, (code, out, err)
    return lines[0]


# ---------------------------------------------------------------- the two ways in


@pytest.mark.parametrize("dataset", ["cifar100", "div2k"])
def test_prepare_downloads_verifies_and_extracts_the_official_archives(site, tmp_path, dataset, capfd):
    root = tmp_path / "data"
    run = wconv("prepare", dataset, "--root", root)
    assert run.returncode == 0, run.stderr
    assert _tree(root) == site.expected(dataset), "root holds exactly the archives' files: no archive, no temp"
    for archive in ARCHIVES[dataset]:
        assert f"{archive}: from {site.url(archive)}" in run.stdout
        assert f"/{archive}" in site.server.paths
    assert ("md5 verified" in run.stdout) == (dataset == "cifar100")
    check(dataset, root)  # the official checks, with the test's official facts
    data = load(dataset, root=root, verify=False, **({"patch_size": 16, "val_fraction": 0.34} if dataset == "div2k" else {}))
    assert len(data.test) > 0

    asked = len(site.server.paths)
    assert main(["data", "prepare", dataset, "--root", str(root)]) == 0
    assert "already in place and verified" in capfd.readouterr().out
    assert len(site.server.paths) == asked, "nothing is downloaded for folders already in place"


@pytest.mark.parametrize("dataset", ["cifar100", "div2k"])
def test_prepare_from_local_archives_downloads_nothing(site, tmp_path, dataset):
    for archive in ARCHIVES[dataset]:
        site.point(dataset, archive, f"http://127.0.0.1:{_closed_port()}/{archive}")  # a download would fail
    given = {a: (site.archives / a).read_bytes() for a in ARCHIVES[dataset]}
    froms = ["--from", site.archives] if dataset == "div2k" else ["--from", site.archives / ARCHIVES[dataset][0]]
    root = tmp_path / "data"
    run = wconv("prepare", dataset, "--root", root, *froms)
    assert run.returncode == 0, run.stderr
    assert _tree(root) == site.expected(dataset)
    assert not site.server.paths
    assert {a: (site.archives / a).read_bytes() for a in ARCHIVES[dataset]} == given, "the given archives stay"
    assert all(f"{a}: from {site.archives / a}" in run.stdout for a in ARCHIVES[dataset])


def test_without_network_prepare_says_so_in_one_line_and_creates_nothing(site, tmp_path, monkeypatch):
    """The official URL (no test sources), behind the refusing proxy: as on a login node without network."""
    monkeypatch.delenv("WCONV_TEST_DATA_SOURCES")
    run = wconv("prepare", "cifar100", "--root", tmp_path / "new" / "data")
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""
    [line] = run.stderr.strip().splitlines()
    assert "downloading cifar-100-python.tar.gz from https://www.cs.toronto.edu/" in line and "failed" in line
    assert "on another machine" in line and "--from cifar-100-python.tar.gz" in line
    assert not (tmp_path / "new").exists(), "nothing is created"


# ---------------------------------------------------------------- refused, with nothing half-extracted


def _corrupt(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


def _zip_folder(path: Path, folder: str, pngs: list[tuple[str, bytes]]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in pngs:
            z.writestr(f"{folder}/{name}" if folder else name, data)


def _official_pngs(site: Site) -> list[tuple[str, bytes]]:
    return sorted((Path(n).name, d) for n, d in _members(site.archives / "DIV2K_train_HR.zip").items())


def _cut_png(site):
    pngs = _official_pngs(site)
    pngs[1] = (pngs[1][0], pngs[1][1][: len(pngs[1][1]) // 2])
    return pngs


# (id, dataset, archive file to serve as the official one: None the official, else (name, bytes)), says
SERVED = [
    ("cifar-cut-download", "cifar100", "cut", ("is not the official archive (md5", "run the same command again")),
    ("cifar-corrupt", "cifar100", lambda s: _corrupt(s.archives / "cifar-100-python.tar.gz"),
     ("is not the official archive (md5", "cut short or damaged")),
    ("div2k-cut-download", "div2k", "cut", ("DIV2K_train_HR.zip from http://127.0.0.1", "cannot be extracted")),
    ("div2k-corrupt", "div2k", lambda s: _corrupt(s.archives / "DIV2K_train_HR.zip"), ("cannot be extracted",)),
    ("div2k-image-cut", "div2k", lambda s: _zip_folder(s.archives / "bad.zip", "DIV2K_train_HR", _cut_png(s)),
     ("DIV2K_train_HR/0002.png is corrupt",)),
    ("div2k-image-missing", "div2k",
     lambda s: _zip_folder(s.archives / "bad.zip", "DIV2K_train_HR", _official_pngs(s)[:-1]),
     ("DIV2K_train_HR holds 2 PNG files, expected 3",)),
    ("div2k-no-folder", "div2k", lambda s: _zip_folder(s.archives / "bad.zip", "", _official_pngs(s)),
     ("holds no DIV2K_train_HR folder", "not the official archive")),
    ("not-found", "cifar100", "missing", ("failed (HTTP 404 File not found)", "--from cifar-100-python.tar.gz")),
]


@pytest.mark.parametrize("dataset, served, says", [c[1:] for c in SERVED], ids=[c[0] for c in SERVED])
def test_a_damaged_download_is_refused_in_one_line_and_leaves_root_as_it_was(site, tmp_path, capfd, dataset,
                                                                            served, says):
    archive = ARCHIVES[dataset][0]
    if served == "cut":
        site.point(dataset, archive, site.url(f"cut/{archive}"))
    elif served == "missing":
        site.point(dataset, archive, site.url(f"nowhere/{archive}"))
    else:
        data = served(site)
        if data is not None:
            (site.archives / "bad.zip").write_bytes(data)
        site.point(dataset, archive, site.url("bad.zip"))
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    line = refused(capfd, "prepare", dataset, "--root", root)
    for part in says:
        assert part in line, line
    assert _tree(root) == {"notes.txt": b"mine"}, "nothing half-extracted, no temporary folder left"


def test_from_a_damaged_local_archive_is_refused_and_the_archive_kept(site, tmp_path, capfd):
    given = tmp_path / "cifar-100-python.tar.gz"
    whole = (site.archives / given.name).read_bytes()
    given.write_bytes(whole[: len(whole) // 2])
    line = refused(capfd, "prepare", "cifar100", "--root", tmp_path / "data", "--from", given)
    assert f"cifar-100-python.tar.gz from {given} is not the official archive (md5" in line
    assert "copy cifar-100-python.tar.gz again" in line
    assert not (tmp_path / "data").exists() and given.read_bytes() == whole[: len(whole) // 2]


@pytest.mark.parametrize("name, says", [
    ("cifar.tgz", "--from {p}: not an archive of cifar100 (its archives are cifar-100-python.tar.gz); give"),
    ("nowhere.tar.gz", "--from {p}: no such file or folder"),
    ("", "--from {p}: gives no cifar-100-python.tar.gz; add --from PATH/cifar-100-python.tar.gz"),
], ids=["renamed", "missing", "folder-without-it"])
def test_from_what_is_not_an_official_archive_is_refused_before_anything_is_made(site, tmp_path, capfd, name,
                                                                                 says):
    path = tmp_path / name if name else tmp_path / "empty"
    if name == "cifar.tgz":
        path.write_bytes((site.archives / "cifar-100-python.tar.gz").read_bytes())
    elif not name:
        path.mkdir()
    line = refused(capfd, "prepare", "cifar100", "--root", tmp_path / "data", "--from", path)
    assert says.format(p=path) in line, line
    assert not (tmp_path / "data").exists() and not site.server.paths


def test_a_folder_verified_before_a_later_archive_fails_stays_and_is_not_fetched_again(site, tmp_path, capfd):
    site.point("div2k", "DIV2K_valid_HR.zip", site.url("cut/DIV2K_valid_HR.zip"))
    root = tmp_path / "data"
    assert "DIV2K_valid_HR.zip from http://127.0.0.1" in refused(capfd, "prepare", "div2k", "--root", root)
    assert _tree(root) == _members(site.archives / "DIV2K_train_HR.zip"), "train verified and kept, valid absent"

    site.point("div2k", "DIV2K_valid_HR.zip", site.url("DIV2K_valid_HR.zip"))
    del site.server.paths[:]
    assert main(["data", "prepare", "div2k", "--root", str(root)]) == 0
    assert "DIV2K_train_HR.zip: already in place and verified" in capfd.readouterr().out
    assert _tree(root) == site.expected("div2k")
    assert "/DIV2K_train_HR.zip" not in site.server.paths and "/DIV2K_valid_HR.zip" in site.server.paths


def test_a_damaged_folder_already_in_place_is_refused_not_overwritten(site, tmp_path, capfd):
    root = write_div2k(tmp_path / "data", n_train=2, n_valid=2)  # one image fewer than the official 3
    before = _tree(root)
    line = refused(capfd, "prepare", "div2k", "--root", root)
    assert f"{root / 'DIV2K_train_HR'} holds 2 PNG files, expected 3: delete {root / 'DIV2K_train_HR'}" in line
    assert _tree(root) == before and not site.server.paths


# ---------------------------------------------------------------- the bundled datasets


@pytest.mark.parametrize("action", ["check", "prepare"])
def test_bundled_digits_say_they_need_no_folder_and_make_none(tmp_path, capfd, action):
    assert main(["data", action, "digits", "--root", str(tmp_path / "x")]) == 0
    out = capfd.readouterr().out
    assert "digits: bundled with scikit-learn and readable; it needs no folder" in out
    assert "verified in" not in out and "downloaded" not in out
    assert not (tmp_path / "x").exists()
