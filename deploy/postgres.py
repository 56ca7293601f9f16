"""A PostgreSQL server of its own on loopback: for `make cluster` and for the tests.

Debian's PostgreSQL binaries (`make test` and `make cluster` install the `postgresql`
package when they are missing) run as the user running this — or, under root, which
PostgreSQL refuses, as the `postgres` system user (else `nobody`). The server listens on
127.0.0.1 only, with no Unix socket, and trusts loopback connections (any local user may
connect as any role): for trying things on one machine, not for a shared host. A
temporary server (the tests') is tuned for speed, not for keeping data (no fsync).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BIN = Path(os.environ.get("CHATLLM_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    """`initdb` (once) and `postgres` in `root`, on 127.0.0.1:`port`.

    Without `root`, a temporary directory (under /tmp: pytest's own temp folder is private
    to root) removed at stop, and a server that does not sync to disk."""

    USER = "chatllm"

    def __init__(self, root: Path | None = None, port: int | None = None) -> None:
        if not (BIN / "postgres").exists():
            raise RuntimeError(
                f"PostgreSQL is not installed ({BIN / 'postgres'} is missing): "
                "`make test` and `make cluster` install Debian's postgresql package"
            )
        self.user = _run_as()
        self.temporary = root is None
        self.root = Path(tempfile.mkdtemp(prefix="chatllm-pg-")) if root is None else root
        self.data = self.root / "data"
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def _as_owner(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def start(self) -> PostgresServer:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(
                [
                    str(BIN / "initdb"),
                    *("-D", str(self.data), "-U", self.USER, "--auth=trust"),
                    *("-E", "UTF8", "--locale=C.UTF-8"),
                    *(["--no-sync"] if self.temporary else []),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                cwd=self.root,
                **self._as_owner(),
            )
        fast = ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        settings = [
            "listen_addresses=127.0.0.1",
            "unix_socket_directories=",
            "max_connections=300",
            *(fast if self.temporary else []),
        ]
        log = (self.root / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(BIN / "postgres"),
                *("-D", str(self.data), "-p", str(self.port)),
                *(part for setting in settings for part in ("-c", setting)),
            ],
            stdout=log,
            stderr=log,
            cwd=self.root,
            **self._as_owner(),
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

    def new_database(self, name: str | None = None) -> str:
        """A new empty database (named `name`, or a new name); its asyncpg URL."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def database(self, name: str) -> str:
        """The asyncpg URL of the database `name`, created if it is not there yet."""
        if not self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip():
            return self.new_database(name)
        return self.url(name)

    def restart(self) -> PostgresServer:
        """A fast shutdown, which drops every client's connection as a crash or an
        operator's restart does, then a start on the same data and port."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=30)
        return self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: smart shutdown, then the fast one below
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGINT)  # fast shutdown
                self.process.wait(timeout=30)
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)
