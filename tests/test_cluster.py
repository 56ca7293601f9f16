"""Two app workers behind nginx (deploy/nginx.conf, as `make cluster` runs it), sharing a
real PostgreSQL database, one data directory and a model server: what a team gets when it
grows past one machine."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deploy.cluster import Nginx
from deploy.postgres import PostgresServer
from tests.support import (
    ROOT,
    AppServer,
    Endpoint,
    SocketUser,
    children,
    command_env,
    free_port,
    run_command,
)

PASSWORD = "a-long-enough-password"
#: A browser's order: long polling first, then the upgrade to a WebSocket.
BROWSER_TRANSPORTS = ["polling", "websocket"]


def descendants(pid: int) -> list[int]:
    found = children(pid)
    for child in list(found):
        found += descendants(child) if Path(f"/proc/{child}").exists() else []
    return found


@dataclass
class Cluster:
    database_url: str
    workers: list[AppServer]
    nginx: Nginx


@pytest.fixture(scope="module")
def cluster(postgres: PostgresServer, endpoint: Endpoint) -> Iterator[Cluster]:
    # Outside pytest's own temp folder (private to root): nginx's workers run unprivileged.
    root = Path(tempfile.mkdtemp(prefix="chatllm-cluster-"))
    root.chmod(0o755)
    data_dir = root / "data"
    data_dir.mkdir()
    url = postgres.new_database()
    settings = {
        "CHATLLM_DATABASE_URL": url,
        "CHATLLM_LOCAL_BACKEND": "false",
        "CHATLLM_OPENAI_BASE_URL": endpoint.base_url,
        "CHATLLM_OPENAI_API_KEY": endpoint.api_key,
        "CHATLLM_LOGIN_ATTEMPTS": "3",
    }
    for name in ("ada", "bob"):
        status, output = run_command(
            command_env(data_dir, **settings),
            "users",
            "add",
            name,
            "--password-stdin",
            stdin=PASSWORD + "\n",
        )
        assert status == 0, output
    workers = [AppServer(data_dir, env=settings) for _ in range(2)]
    nginx = None
    try:
        for worker in workers:
            worker.start()
        nginx = Nginx(root / "nginx", [w.port for w in workers]).start()
        yield Cluster(url, workers, nginx)
    finally:
        if nginx is not None:
            nginx.stop()
        for worker in workers:
            worker.stop()
        shutil.rmtree(root, ignore_errors=True)


def login(base: str, name: str, password: str = PASSWORD) -> httpx.Response:
    return httpx.post(base + "/login", data={"username": name, "password": password}, timeout=60)


def threads(base: str, cookies: httpx.Cookies) -> list[dict[str, object]]:
    listed = httpx.post(
        base + "/project/threads",
        json={"pagination": {"first": 20}, "filter": {}},
        cookies=cookies,
        timeout=30,
    )
    listed.raise_for_status()
    return list(listed.json()["data"])


def replies(tab: SocketUser) -> list[dict[str, object]]:
    return [m for m in tab.finished_replies() if (m.get("metadata") or {}).get("kind")]


async def answered(tab: SocketUser, text: str, **settings: object) -> None:
    await tab.turn(text, seconds=120, **settings)


def test_workers_run_on_the_endpoint_without_a_model_of_their_own(cluster: Cluster) -> None:
    for worker in cluster.workers:
        assert worker.process is not None
        assert children(worker.process.pid) == []  # no engine process, no model loaded
        config = httpx.get(worker.base + "/auth/config", timeout=30).json()
        assert config["requireLogin"] and config["passwordAuth"]


async def test_a_thread_made_on_one_worker_is_listed_resumed_and_continued_on_the_other(
    cluster: Cluster,
) -> None:
    first, second = cluster.workers
    signed_in = login(first.base, "ada")
    assert signed_in.status_code == 200, signed_in.text
    tab = SocketUser(first.base)
    await tab.connect(signed_in.cookies)
    try:
        await answered(tab, "Say hi.", max_tokens=8, temperature=0.0)
        await tab.turn("export", "Export", seconds=120)  # files, written by this worker
    finally:
        await tab.client.disconnect()
    # The login made on the first worker is good on the second: same secret, same users.
    listed = threads(second.base, signed_in.cookies)
    assert [t["id"] for t in listed] == [tab.thread_id]
    assert threads(second.base, login(second.base, "bob").cookies) == []  # nor is it bob's
    again = SocketUser(second.base, thread_id=tab.thread_id)
    await again.connect(signed_in.cookies, start=False)
    try:
        await again.client.emit("connection_successful")
        await again.wait_for(lambda: again.named("chat_settings"))  # resumed
        await again.wait_for(lambda: again.named("task_end"))
        await answered(again, "Say bye.")  # with the sliders the thread left
    finally:
        await again.client.disconnect()
    thread = httpx.get(
        f"{first.base}/project/thread/{tab.thread_id}", cookies=signed_in.cookies, timeout=30
    ).json()
    said = [s for s in thread["steps"] if s["type"].endswith("message")]
    asked = [s["output"] for s in said if s["type"] == "user_message"]
    kinds = [(s.get("metadata") or {}).get("kind") for s in said if s["type"] != "user_message"]
    assert asked == ["Say hi.", "Say bye."] and kinds == ["reply", "export", "reply"]
    # The export's files, written by the first worker, are served by the second.
    (exported,) = [e for e in thread["elements"] or [] if e["name"].endswith(".json")]
    served = httpx.get(second.base + exported["url"], cookies=signed_in.cookies, timeout=30)
    assert served.status_code == 200 and "Say hi." in served.text
    for worker in cluster.workers:  # both answered from the shared model server
        assert worker.process is not None and children(worker.process.pid) == []


async def test_browsers_through_nginx_each_stay_on_one_worker_and_chat(cluster: Cluster) -> None:
    """Each browser polls, upgrades and uploads to the worker holding its session; a poll
    reaching the other worker would be refused ("Invalid session")."""

    async def browser(n: int) -> int:
        page = httpx.get(cluster.nginx.base + "/", timeout=30)  # the page sets the affinity
        assert page.status_code == 200
        signed_in = httpx.post(
            cluster.nginx.base + "/login",
            data={"username": "ada", "password": PASSWORD},
            cookies=page.cookies,
            timeout=60,
        )
        assert signed_in.status_code == 200, signed_in.text
        cookies = {**page.cookies, **signed_in.cookies}
        assert "chatllm_worker" in cookies
        tab = SocketUser(cluster.nginx.base, transports=BROWSER_TRANSPORTS)
        await tab.connect(cookies)
        try:
            await answered(tab, f"Say the number {n}.", max_tokens=8)
            return len(replies(tab))
        finally:
            await tab.client.disconnect()

    assert await asyncio.gather(*(browser(n) for n in range(6))) == [1] * 6


def test_failed_logins_on_one_worker_count_on_the_other(cluster: Cluster) -> None:
    first, second = cluster.workers
    assert login(first.base, "bob", "a-wrong-guess").status_code == 401
    assert login(second.base, "bob", "a-wrong-guess").status_code == 401
    assert login(first.base, "bob", "a-wrong-guess").status_code == 401
    locked = login(second.base, "bob")  # the limit is 3, counted across both
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0


def test_make_cluster_starts_everything_on_loopback_and_stops_it_all(tmp_path: Path) -> None:
    """`make cluster`'s script, as an operator runs it: one URL that serves the app, every
    process gone after it is told to stop."""
    root = Path(tempfile.mkdtemp(prefix="chatllm-make-cluster-"))
    root.chmod(0o755)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATLLM_", "CHAINLIT_"))}
    out = tmp_path / "cluster.out"
    with out.open("wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "deploy.cluster", "--workers", "1"),
                *("--port", str(port), "--dir", str(root)),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(1200):  # up to two minutes
            if "Ctrl-C stops everything" in out.read_text() or process.poll() is not None:
                break
            time.sleep(0.1)
        assert process.poll() is None, out.read_text()
        started = descendants(process.pid)
        assert len(started) >= 4  # PostgreSQL, the model server, a worker, nginx (and theirs)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200 and "chatllm_worker" in page.cookies
        assert f"http://127.0.0.1:{port}" in out.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, out.read_text()
        assert [pid for pid in started if Path(f"/proc/{pid}").exists()] == []
        assert (root / "postgres" / "data" / "PG_VERSION").exists()  # the data is kept
    finally:
        if process.poll() is None:
            process.kill()
        shutil.rmtree(root, ignore_errors=True)


def test_the_systemd_unit_for_workers_is_one_systemd_accepts(tmp_path: Path) -> None:
    """deploy/chatllm@.service, pointed at this checkout, passes `systemd-analyze verify`
    (its paths, directives and the instance's port in the command line)."""
    unit = (ROOT / "deploy" / "chatllm@.service").read_text().replace("/opt/chatllm", str(ROOT))
    (tmp_path / "chatllm@.service").write_text(unit)
    (tmp_path / "chatllm@8101.service").symlink_to(tmp_path / "chatllm@.service")
    checked = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "chatllm@8101.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0 and not checked.stderr.strip(), checked.stderr
    assert "--port %i" in unit and "--host 127.0.0.1" in unit
