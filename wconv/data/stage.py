"""Staging a dataset from its official archives under a root: downloaded, or given (``--from``), and moved
into place only once verified.

    stage("cifar100", root, archives("cifar100"), problem, sources=None)   # what ``prepare`` does

Each archive that ``root`` still lacks goes through the same steps, inside a temporary folder
``root/.NAME-prepare-*`` beside its target:

1. obtained: downloaded from its URL with torchvision's ``download_url``, or read where the user put it
   (``--from FILE``, or ``--from FOLDER`` holding it; the archives keep their official file names);
2. compared with the official md5 where the publisher gives one (CIFAR-100), before anything is extracted
   (so only the official archive is ever extracted: torchvision's tar extraction takes paths as written);
3. extracted with torchvision's ``extract_archive``;
4. the folder it holds checked as the dataset's ``check`` checks it (official md5s of the files, or the
   official image count), and every image decoded (DIV2K, which publishes no checksum);
5. renamed into ``root``: one rename, so ``root/FOLDER`` exists only once it is complete and verified.

A failure at any step is one ``DatasetError`` line saying what to do; the temporary folder goes, and so
does ``root`` (with the parents this call made) unless a verified folder was already moved in. A folder
already in place and verified is kept and nothing is downloaded for it; one in place but damaged is
refused (delete it first): ``stage`` never overwrites.

Test-only: ``WCONV_TEST_DATA_SOURCES`` names a JSON file whose entries replace the official facts of
``official`` (URLs, md5s, image counts), e.g. ``{"cifar100": {"archives": {"cifar-100-python.tar.gz":
{"url": "http://127.0.0.1:8000/c.tar.gz", "md5": "…"}}, "files": {"train": "…"}}}``, so that tests can
serve small generated archives from 127.0.0.1. Never set it for real data.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import zipfile
import zlib
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from wconv.data.task import DatasetError

TEST_SOURCES_ENV = "WCONV_TEST_DATA_SOURCES"
"""Test-only: a JSON file replacing the official facts (see the module docstring)."""
DOWNLOAD_TIMEOUT = 60
"""Seconds a download may wait for the server (to connect, or for the next bytes) before it fails."""


@dataclass(frozen=True)
class Archive:
    """One official archive of a dataset."""

    filename: str
    """Its official file name (its suffix tells ``extract_archive`` how to open it)."""
    url: str
    md5: str | None
    """The publisher's md5 of the archive; None where there is none (the extracted files are checked)."""
    folder: str
    """The folder it holds, which ``stage`` moves into the root."""
    content: str
    """What the check of that folder verifies, in words (for the summary)."""


@dataclass(frozen=True)
class Staged:
    """What ``stage`` did with one archive."""

    archive: str
    folder: Path
    source: str | None
    """The URL or file it came from; None: its folder was already in place and verified."""
    verified: str
    """How its content was verified, in words."""


def official(name: str, facts: dict) -> dict:
    """``facts`` with the entries for dataset ``name`` of the JSON file ``$WCONV_TEST_DATA_SOURCES``
    merged in, mapping by mapping (tests only; without the variable, ``facts`` unchanged)."""
    path = os.environ.get(TEST_SOURCES_ENV)
    if not path:
        return facts
    try:
        override = json.loads(Path(path).read_text()).get(name, {})
    except (OSError, ValueError, AttributeError) as e:
        raise DatasetError(f"{TEST_SOURCES_ENV}={path}: cannot read test sources ({type(e).__name__}: {e}); "
                           f"this variable is for tests only: unset it") from None
    return _merged(copy.deepcopy(facts), override)


def _merged(into: dict, override: dict) -> dict:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merged(into[key], value)
        else:
            into[key] = value
    return into


def stage(name: str, root: Path, archives: Sequence[Archive], problem: Callable[[Path, Archive, bool],
          tuple[Path, str] | None], sources: Sequence[Path] | None = None) -> list[Staged]:
    """Put the folder of each of ``archives`` under ``root``, verified (see the module docstring).

    ``problem(folder, archive, decode)`` says what is wrong with ``archive``'s folder ``folder``: (the folder
    or the file in it, what is wrong with it), or None; ``decode`` also decodes every image.
    ``sources``: local archives or folders holding them (``--from``); then nothing is downloaded.
    """
    root = root.absolute()
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root} is not a folder: choose another --root")
    staged, needed = [], []
    for archive in archives:
        target = root / archive.folder
        if not os.path.lexists(target):
            needed.append(archive)
            continue
        found = problem(target, archive, False)
        if found:
            path, what = found
            raise DatasetError(f"{path} {what}: delete {target} and run the same command again")
        staged.append(Staged(archive.filename, target, None, "already in place and verified"))
    given = _given(name, archives, needed, sources) if sources is not None else {}
    if not needed:
        return staged
    made = _make_folder(root)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-prepare-", dir=root))
    moved = False
    try:
        for archive in needed:
            staged.append(_stage_one(name, root, archive, problem, given.get(archive.filename), work))
            moved = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not moved:
            for folder in made:  # the folders this call made, deepest first
                try:
                    folder.rmdir()
                except OSError:
                    break
    return staged


def _stage_one(name: str, root: Path, archive: Archive, problem, given: Path | None, work: Path) -> Staged:
    if given is None:
        path, origin = _download(name, root, archive, work), archive.url
        again = "run the same command again"
    else:
        path, origin = given, str(given)
        again = f"copy {archive.filename} again from where it was downloaded, or download it again"
    verified = []
    if archive.md5:
        from torchvision.datasets.utils import calculate_md5

        md5 = calculate_md5(path)
        if md5 != archive.md5:
            raise DatasetError(f"{archive.filename} from {origin} is not the official archive (md5 {md5}, the "
                               f"official is {archive.md5}): it is cut short or damaged; {again}")
        verified.append("archive md5 verified")
    out = work / "extracted"
    _extract(path, out, origin, again)
    if path.parent == work:
        path.unlink()  # a downloaded archive is not needed once extracted; a given one is the user's
    folder = out / archive.folder
    if not folder.is_dir():
        held = ", ".join(sorted(p.name for p in out.iterdir())[:5]) or "nothing"
        raise DatasetError(f"{archive.filename} from {origin} holds no {archive.folder} folder (it holds {held}): "
                           f"it is not the official archive; {again}")
    found = problem(folder, archive, True)
    if found:
        bad, what = found
        raise DatasetError(f"{archive.filename} from {origin}: {bad.relative_to(out)} {what}; {again}")
    target = root / archive.folder
    try:
        folder.rename(target)
    except OSError as e:
        raise DatasetError(f"cannot move the verified {archive.folder} into {root} ({e}); "
                           f"run the same command again") from None
    shutil.rmtree(out, ignore_errors=True)
    return Staged(archive.filename, target, origin, ", ".join([*verified, archive.content]))


def _given(name: str, archives: Sequence[Archive], needed: Sequence[Archive], sources: Sequence[Path]
           ) -> dict[str, Path]:
    """The official file name -> the local file of each needed archive among ``sources``."""
    names = [a.filename for a in archives]
    found: dict[str, Path] = {}
    for source in sources:
        source = Path(source).expanduser().absolute()
        if source.is_dir():
            found.update({n: source / n for n in names if (source / n).is_file()})
        elif source.is_file():
            if source.name not in names:
                raise DatasetError(f"--from {source}: not an archive of {name} (its archives are "
                                   f"{', '.join(names)}); give the archive under its official name")
            found[source.name] = source
        else:
            raise DatasetError(f"--from {source}: no such file or folder")
    missing = [a.filename for a in needed if a.filename not in found]
    if missing:
        raise DatasetError(f"--from {', '.join(map(str, sources))}: gives no {' and no '.join(missing)}; "
                           f"add --from PATH/{missing[0]}")
    return found


def _make_folder(root: Path) -> list[Path]:
    """Make ``root`` and its missing parents; return the ones made, deepest first."""
    made, folder = [], root.absolute()
    while not os.path.lexists(folder):
        made.append(folder)
        folder = folder.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"cannot create {root} ({e.strerror or e}): choose another --root") from None
    return made


@contextmanager
def _timeout(seconds: float):
    """urllib (which torchvision downloads with) waits forever by default: a dropped connection would hang."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _download(name: str, root: Path, archive: Archive, work: Path) -> Path:
    from torchvision.datasets.utils import download_url

    try:
        with _timeout(DOWNLOAD_TIMEOUT):
            download_url(archive.url, work, archive.filename)  # md5 compared by the caller, with a clearer message
    except (OSError, http.client.HTTPException, ValueError, RuntimeError) as e:
        raise DatasetError(f"downloading {archive.filename} from {archive.url} failed ({_reason(e)}): where there is no network, download it on another machine, copy it here "
                           f"and run `wconv data prepare {name} --root {root} --from {archive.filename}`") from None
    return work / archive.filename


def _reason(e: Exception) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):  # no network, no such host, refused, timed out
        return str(e.reason)
    return f"{type(e).__name__}: {e}"


def _extract(path: Path, out: Path, origin: str, again: str) -> None:
    from torchvision.datasets.utils import extract_archive

    try:
        extract_archive(path, out)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, RuntimeError) as e:
        raise DatasetError(f"{path.name} from {origin} cannot be extracted ({type(e).__name__}: {e}): it is cut "
                           f"short or damaged; {again}") from None
    except OSError as e:
        raise DatasetError(f"extracting {path.name} into {out.parent} failed ({e}): free space there or choose "
                           f"another --root") from None
