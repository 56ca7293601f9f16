"""A real PostgreSQL server for the tests, started in a temporary directory on loopback.

Debian's PostgreSQL binaries (`make test` installs the `postgresql` package when they are
missing) run as the user running the tests — or, under root, which PostgreSQL refuses, as
the `postgres` system user (else `nobody`). The server listens on 127.0.0.1 only, on a
free port, with no Unix socket, and trusts loopback connections: it holds test data only.
It is tuned for tests, not for keeping data (no fsync).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.support import free_port

BIN = Path(os.environ.get("CHATLLM_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user to run PostgreSQL as, when the tests run as root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and no 'postgres' or 'nobody' user to run PostgreSQL")


class PostgresServer:
    """`initdb` and `postgres` in a temporary directory, on 127.0.0.1:`port`."""

    USER = "chatllm"

    def __init__(self) -> None:
        if not (BIN / "postgres").exists():
            raise RuntimeError(
                f"PostgreSQL is not installed ({BIN / 'postgres'} is missing): "
                "`make test` installs Debian's postgresql package"
            )
        self.user = _run_as()
        # Not under pytest's own temp folder: that is private to root.
        self.root = Path(tempfile.mkdtemp(prefix="chatllm-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def _as_owner(self) -> dict[str, object]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def start(self) -> PostgresServer:
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        subprocess.run(
            [
                str(BIN / "initdb"),
                *("-D", str(self.data), "-U", self.USER, "--auth=trust"),
                *("-E", "UTF8", "--locale=C.UTF-8", "--no-sync"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=self.root,
            **self._as_owner(),  # type: ignore[arg-type]
        )
        log = (self.root / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(BIN / "postgres"),
                *("-D", str(self.data), "-p", str(self.port)),
                *("-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="),
                *("-c", "fsync=off", "-c", "synchronous_commit=off"),
                *("-c", "full_page_writes=off", "-c", "max_connections=300"),
            ],
            stdout=log,
            stderr=log,
            cwd=self.root,
            **self._as_owner(),  # type: ignore[arg-type]
        )
        log.close()
        for _ in range(600):  # up to a minute
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"PostgreSQL ended at start: {(self.root / 'server.log').read_text()[-2000:]}"
                )
            ready = subprocess.run(
                [str(BIN / "pg_isready"), *self._address(), "-d", "postgres", "-t", "1"],
                stdout=subprocess.DEVNULL,
                check=False,
            )
            if ready.returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("PostgreSQL did not accept connections within a minute")

    def url(self, database: str, driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://{self.USER}@127.0.0.1:{self.port}/{database}"

    def _address(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", self.USER]

    def psql(self, sql: str, database: str = "postgres") -> str:
        """`sql` run by psql; its unaligned output."""
        done = subprocess.run(
            [str(BIN / "psql"), *self._address(), "-d", database, "-XAtqc", sql],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql: {done.stderr.strip()}")
        return done.stdout

    def new_database(self) -> str:
        """A new empty database; its asyncpg URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: smart shutdown, then the fast one below
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.send_signal(2)  # SIGINT: fast shutdown
                self.process.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)
