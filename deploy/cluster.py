"""The whole multi-worker set-up on one machine, to try it: `make cluster`.

    python -m deploy.cluster [--workers 2] [--port 8000] [--dir data/cluster]

Starts, on 127.0.0.1 only:
- PostgreSQL, its data kept in DIR/postgres (deploy/postgres.py);
- the model server, `python -m llama_cpp.server` with the embedded model, which every
  worker shares (an API key made up for this run, never written down);
- N app workers (`chainlit run app.py`) on the endpoint alone (CHATLLM_LOCAL_BACKEND=false),
  sharing the database, the data directory DIR/data (the auth secret, element files);
- nginx in front of them (deploy/nginx.conf), each browser kept on one worker.

Then waits; Ctrl-C stops everything, newest first. With no users the workers run in local
mode (this machine only, no login); add one with the database URL printed at start and run
the command again for password mode.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.postgres import PostgresServer, free_port

ROOT = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = Path(__file__).with_name("nginx.conf")
NGINX = os.environ.get("CHATLLM_NGINX", "/usr/sbin/nginx")
#: The database the workers share on the cluster's PostgreSQL server.
DATABASE = "chatllm"


def wait_until_serving(
    process: subprocess.Popen[bytes],
    request: urllib.request.Request,
    what: str,
    log: Path,
    timeout: float = 180.0,
) -> None:
    """Poll `request` until it answers (any HTTP status); fail with the end of `log` (the
    process's stderr, written to a file: a pipe nobody reads would stop the process once
    full) if the process exits first, or once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} ended at start:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError as exc:
            if time.monotonic() > deadline:
                late = f"{what} did not answer within {timeout:.0f} s; see {log}"
                raise RuntimeError(late) from exc
            time.sleep(0.2)


def stop_process(process: subprocess.Popen[bytes] | None, signum: int = signal.SIGTERM) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Nginx:
    """nginx (Debian's) on 127.0.0.1:`port` in front of workers on `worker_ports`, run in
    the foreground from its own folder `run_dir`, with deploy/nginx.conf filled in."""

    run_dir: Path
    worker_ports: Sequence[int]
    port: int = field(default_factory=free_port)
    listen: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> Path:
        workers = "\n".join(f"        server 127.0.0.1:{p};" for p in self.worker_ports)
        text = (
            NGINX_TEMPLATE.read_text()
            .replace("@RUN_DIR@", str(self.run_dir))
            .replace("@LISTEN@", f"{self.listen}:{self.port}")
            .replace("@WORKERS@", workers)
        )
        path = self.run_dir / "nginx.conf"
        path.write_text(text)
        return path

    def start(self) -> Nginx:
        if not Path(NGINX).exists():
            raise RuntimeError(
                f"nginx is not installed ({NGINX} is missing): `make cluster` and `make test`"
                " install Debian's nginx-light package"
            )
        # nginx's own workers run as an unprivileged user under root: they must reach
        # their temporary folders.
        self.run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        config = self.config()
        log = self.run_dir / "error.log"
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.run_dir), "-c", str(config), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
        )
        wait_until_serving(
            self.process, urllib.request.Request(self.base + "/health"), "nginx", log, 60
        )
        return self

    def stop(self) -> None:
        stop_process(self.process, signal.SIGQUIT)  # graceful: open requests finish
        self.process = None


@dataclass
class Worker:
    """One app worker: `chainlit run app.py` on 127.0.0.1:`port`, as `make run` starts it."""

    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.data_dir / f"worker-{self.port}.log"

    def start(self) -> Worker:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        chainlit = str(Path(sys.executable).with_name("chainlit"))
        self.process = subprocess.Popen(
            [
                *(chainlit, "run", "app.py", "--headless"),
                *("--host", "127.0.0.1", "--port", str(self.port)),
            ],
            cwd=ROOT,
            env={**self.env, "CHATLLM_DATA_DIR": str(self.data_dir)},
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )
        request = urllib.request.Request(self.base + "/health")
        wait_until_serving(self.process, request, f"the worker on port {self.port}", self.log)
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


@dataclass
class ModelServer:
    """llama-cpp-python's OpenAI-compatible server with the embedded model (or
    CHATLLM_MODEL_PATH), on 127.0.0.1, behind an API key of its own."""

    log: Path
    model: Path
    alias: str = "smollm2"
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ModelServer:
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "llama_cpp.server", "--model", str(self.model)),
                *("--model_alias", self.alias, "--host", "127.0.0.1", "--port", str(self.port)),
                *("--n_ctx", "4096", "--interrupt_requests", "false", "--verbose", "false"),
            ],
            # The key by environment, not on the command line that `ps` shows.
            env={**os.environ, "API_KEY": self.api_key},
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )
        request = urllib.request.Request(
            f"{self.base_url}/models", headers={"Authorization": f"Bearer {self.api_key}"}
        )
        wait_until_serving(self.process, request, "the model server", self.log)
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


def worker_env(database_url: str, model: ModelServer) -> dict[str, str]:
    """A worker's environment: this one's, and the shared database and model server."""
    return {
        **os.environ,
        "CHATLLM_DATABASE_URL": database_url,
        "CHATLLM_LOCAL_BACKEND": "false",
        "CHATLLM_OPENAI_BASE_URL": model.base_url,
        "CHATLLM_OPENAI_API_KEY": model.api_key,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.cluster", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workers", type=int, default=2, help="app workers (default 2)")
    parser.add_argument("--port", type=int, default=8000, help="nginx's port (default 8000)")
    parser.add_argument(
        "--dir", type=Path, default=ROOT / "data" / "cluster", help="where its data lives"
    )
    args = parser.parse_args(argv)
    from chatllm.config import Settings

    model_path = Settings().resolve_model_path()
    run_dir = args.dir.resolve()
    run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    started: list[PostgresServer | ModelServer | Worker | Nginx] = []
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        database = PostgresServer(root=run_dir / "postgres").start()
        started.append(database)
        url = database.database(DATABASE)
        model = ModelServer(run_dir / "model-server.log", model_path).start()
        started.append(model)
        workers = []
        for _ in range(args.workers):
            workers.append(Worker(run_dir / "data", worker_env(url, model)).start())
            started.append(workers[-1])
        nginx = Nginx(run_dir / "nginx", [w.port for w in workers], port=args.port).start()
        started.append(nginx)
        print(
            f"chatllm: {nginx.base}  ({args.workers} workers on ports"
            f" {', '.join(str(w.port) for w in workers)}; PostgreSQL: {url})\n"
            f"  logs: {run_dir}\n"
            f"  password mode: CHATLLM_DATABASE_URL={url} .venv/bin/python -m chatllm users"
            " add NAME, then run this again\n"
            "  Ctrl-C stops everything.",
            flush=True,
        )
        while not stopping and all(s.process is None or s.process.poll() is None for s in started):
            time.sleep(0.5)
        ended = [s for s in started if s.process is not None and s.process.poll() is not None]
        if ended and not stopping:
            print(f"chatllm: {type(ended[0]).__name__} ended; stopping the rest", file=sys.stderr)
            return 1
        return 0
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(f"chatllm cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        for service in reversed(started):
            service.stop()
        shutil.rmtree(run_dir / "nginx" / "client_body", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
