"""A throwaway PostgreSQL server for tests: initdb into a temporary directory, start it on a free
localhost port, hand out one fresh database per test, stop and delete it all at the end.

Import the fixtures into a test module (``from pg import postgres_server, postgres_url``).
The server binaries are looked up in ``$PG_BIN``, then ``/usr/lib/postgresql/<newest>/bin``, then
``PATH``; if they are missing the fixture fails (it does not skip): CI installs them.
initdb refuses to run as root, so under root the server runs as the ``postgres`` OS user.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

_INSTALL_HINT = "install PostgreSQL server binaries (e.g. apt-get install postgresql) or set PG_BIN to their directory"


def find_pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    candidates = []
    if os.environ.get("PG_BIN"):
        candidates.append(os.environ["PG_BIN"])
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    newest_first = sorted(versions, key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += reversed(newest_first)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).resolve().parent))
    for directory in candidates:
        if (Path(directory) / "initdb").is_file() and (Path(directory) / "pg_ctl").is_file():
            return Path(directory)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, trust authentication, superuser ``postgres``."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.run_as = None
        if os.geteuid() == 0:
            try:
                self.run_as = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail(
                    "initdb refuses to run as root and there is no 'postgres' OS user: "
                    "create one (useradd -m postgres) or run the tests as a non-root user",
                    pytrace=False,
                )
        # Under /tmp directly (not pytest's 0700 tmp_path, which the postgres user cannot enter),
        # and short: a unix socket path must stay under ~100 characters.
        self.root = Path(tempfile.mkdtemp(prefix="wconv-pg-"))
        if self.run_as is not None:
            os.chown(self.root, self.run_as.pw_uid, self.run_as.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port: int | None = None
        self._names = itertools.count()

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.run_as is not None:
            if shutil.which("runuser"):
                cmd = ["runuser", "-u", self.run_as.pw_name, "--", *cmd]
            else:
                cmd = ["su", self.run_as.pw_name, "-s", "/bin/sh", "-c", shlex.join(cmd)]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=self.root, timeout=120)

    def start(self) -> None:
        done = self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"
        )  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"initdb failed: {(done.stderr or done.stdout).strip()}", pytrace=False)
        for _ in range(3):  # the free port may be taken between choosing it and binding it
            self.port = _free_port()
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"  # throwaway data: speed over safety
            )
            done = self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start"
            )  # fmt: skip
            if done.returncode == 0:
                self._options = options
                return
        log = self.log.read_text()[-2000:] if self.log.exists() else ""
        pytest.fail(f"pg_ctl start failed: {(done.stderr or done.stdout).strip()} {log}", pytrace=False)

    def pause(self) -> None:
        """Stop the server as an outage would (fast shutdown: clients are disconnected); ``resume`` restarts it."""
        done = self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        assert done.returncode == 0, done.stderr or done.stdout

    def resume(self) -> None:
        """Start the paused server again, on the same port."""
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", self._options,
                         "start")
        assert done.returncode == 0, done.stderr or done.stdout

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._names)}"
        server = dict(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        with psycopg.connect(**server, autocommit=True) as conn:
            # FILE_COPY: much faster than PG 15's default WAL_LOG copy when fsync is off
            conn.execute(f'CREATE DATABASE "{name}" STRATEGY = FILE_COPY')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres_server():
    """A running throwaway server for the whole test session."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.fail(f"PostgreSQL binaries (initdb, pg_ctl) not found: {_INSTALL_HINT}", pytrace=False)
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The SQLAlchemy URL of a fresh, empty database on the throwaway server."""
    return postgres_server.create_database()
