"""Start-up: the app beside a bare Chainlit app with a SQLite data layer, side by side.

Each round starts both, one after the other in alternating order, as `chainlit run` does
(headless, on a free loopback port, each with a fresh data directory), and times:

- **first page**: from starting the process to the first HTTP 200 of `/`;
- the app's steps, from its log: its chat loaded (`Services`: from then on its hooks
  answer and a person can type), its engine's model loaded and checked, and the model's
  first reply made (`ChatApp._warm_local_model`: from then on a question is answered at
  full speed) — the model must be loaded before a person can type;
- **can type** (with a browser, the default): Chromium opens the page as soon as it is
  served, and the time is taken when its message box shows (the page loaded, its socket
  connected, its chat started) — for both apps;
- **RSS**, two seconds after the model is ready (after the first page for the bare app):
  the web process, and the app's engine process apart, beside the model file's size and
  its KV cache's (2 × layers × context × KV width × 2 bytes, from the GGUF's metadata).

The table gives medians over the rounds and the first page's ratio against the target
(the app ≤ 1.3× the bare app).

    .venv/bin/python bench/startup.py [--rounds 5] [--browser /usr/bin/chromium] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHAINLIT = str(Path(sys.executable).with_name("chainlit"))
TARGET_RATIO = 1.3
#: The app's log lines that mark its steps: its chat loaded (hooks answer, a person can type),
#: its engine's model loaded and checked, the model's first reply made.
MARKS = {
    "chat_loaded_s": re.compile(r"The chat is loaded"),
    "engine_ready_s": re.compile(r"Local engine ready"),
    "model_ready_s": re.compile(r"The local model made its first reply ahead|could not make"),
}

BARE_APP = '''"""A bare Chainlit app with Chainlit's own SQLAlchemy data layer on SQLite."""
import os

import chainlit as cl
from chainlit.data.sql_alchemy import SQLAlchemyDataLayer


@cl.data_layer
def data_layer():
    return SQLAlchemyDataLayer(conninfo=os.environ["BARE_DATABASE"])


@cl.on_message
async def on_message(message: cl.Message) -> None:
    await cl.Message(content=message.content).send()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else 0.0


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def start(kind: str, workdir: Path, bare_dir: Path, page: Any = None) -> dict[str, Any]:
    """Start one app, time its first page (and the app's model), measure its memory; with a
    browser `page`, also when its message box is there to type in."""
    port = free_port()
    data = workdir / f"{kind}-data"
    data.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATLLM_", "CHAINLIT_"))}
    env["CHATLLM_DATA_DIR"] = str(data)
    if kind == "bare":
        cwd = bare_dir
        env["BARE_DATABASE"] = f"sqlite+aiosqlite:///{data / 'bare.db'}"
    else:
        cwd = ROOT
    began = time.perf_counter()
    process = subprocess.Popen(
        [CHAINLIT, "run", "app.py", "--headless", "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # Chainlit's logging, the app's included, goes to stdout
        text=True,
    )
    marked: dict[str, float] = {}
    log: list[str] = []

    def read_log() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            log.append(line)
            for mark, pattern in MARKS.items():
                if mark not in marked and pattern.search(line):
                    marked[mark] = time.perf_counter() - began

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    first_page = None
    try:
        for _ in range(6000):  # 120 s at most
            if process.poll() is not None:
                raise RuntimeError(f"{kind} exited: {''.join(log)[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                    if answer.status == 200:
                        first_page = time.perf_counter() - began
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.02)
        if first_page is None:
            raise RuntimeError(f"{kind} never served its first page")
        can_type = None
        if page is not None:  # the page loaded, connected, its chat started: the box shows
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#chat-input").wait_for(state="visible", timeout=120_000)
            can_type = time.perf_counter() - began
        if kind == "app":
            for _ in range(6000):
                if len(marked) == len(MARKS) or process.poll() is not None:
                    break
                time.sleep(0.02)
            if len(marked) < len(MARKS):
                raise RuntimeError(f"the app never got ready: {''.join(log)[-2000:]}")
        time.sleep(2)
        engines = children(process.pid)
        return {
            "first_page_s": first_page,
            "can_type_s": can_type,
            **{mark: marked.get(mark) for mark in MARKS},
            "web_rss_mb": rss_mb(process.pid),
            "engine_rss_mb": sum(rss_mb(pid) for pid in engines),
        }
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def model_sizes() -> dict[str, float]:
    """The embedded model's file size and its KV cache's at the app's context size."""
    from llama_cpp import Llama

    from chatllm.config import Settings

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    path = settings.resolve_model_path()
    meta = Llama(str(path), vocab_only=True, verbose=False).metadata
    arch = meta["general.architecture"]
    layers = int(meta[f"{arch}.block_count"])
    width = int(meta[f"{arch}.embedding_length"])
    heads = int(meta[f"{arch}.attention.head_count"])
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    kv_bytes = 2 * layers * settings.n_ctx * (width // heads * kv_heads) * 2  # K and V, f16
    return {
        "model_file_mb": path.stat().st_size / 2**20,
        "kv_cache_mb": kv_bytes / 2**20,
        "n_ctx": settings.n_ctx,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--browser",
        default="/usr/bin/chromium",
        help="Chromium, which opens each app's page to time when its message box is there "
        "to type in ('' to skip)",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    (workdir / "bare").mkdir()
    (workdir / "bare" / "app.py").write_text(BARE_APP)
    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "app": []}
    browser = page = None
    if args.browser:
        from playwright.sync_api import sync_playwright

        browser = sync_playwright().start()
        context = browser.chromium.launch(
            executable_path=args.browser, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        page = context.new_page()
    try:
        warm_up = workdir / "warm-up"  # one start of each, unmeasured: the file cache filled
        warm_up.mkdir()
        for kind in runs:
            start(kind, warm_up, workdir / "bare", page)
        for round_ in range(args.rounds):
            order = ("bare", "app") if round_ % 2 == 0 else ("app", "bare")
            round_dir = workdir / f"round-{round_}"
            round_dir.mkdir()
            for kind in order:
                runs[kind].append(start(kind, round_dir, workdir / "bare", page))
            bare, app = runs["bare"][-1], runs["app"][-1]
            print(
                f"round {round_ + 1}: first page bare {bare['first_page_s']:.2f} s, "
                f"app {app['first_page_s']:.2f} s; chat loaded {app['chat_loaded_s']:.2f} s, "
                f"engine ready {app['engine_ready_s']:.2f} s, "
                f"first reply made {app['model_ready_s']:.2f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if browser is not None:
            browser.stop()

    def median(kind: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[kind]))

    sizes = model_sizes()
    bare_page, app_page = median("bare", "first_page_s"), median("app", "first_page_s")
    ratio = app_page / bare_page
    ready = median("app", "model_ready_s")
    chat, engine = median("app", "chat_loaded_s"), median("app", "engine_ready_s")
    print()
    print("| | bare Chainlit + SQLite data layer | chatllm |")
    print("| --- | --- | --- |")
    print(f"| first page (start → HTTP 200) | {bare_page:.2f} s | {app_page:.2f} s |")
    if args.browser:
        print(
            f"| a browser's page shows its message box | {median('bare', 'can_type_s'):.2f} s "
            f"| {median('app', 'can_type_s'):.2f} s |"
        )
    print(f"| the chat loaded (its hooks answer) | | {chat:.2f} s |")
    print(f"| the engine's model loaded and checked | | {engine:.2f} s |")
    print(f"| the model's first reply made (warm) | | {ready:.2f} s |")
    print(
        f"| RSS, web process | {median('bare', 'web_rss_mb'):.0f} MB "
        f"| {median('app', 'web_rss_mb'):.0f} MB |"
    )
    print(f"| RSS, engine process | | {median('app', 'engine_rss_mb'):.0f} MB |")
    print(
        f"\nModel file {sizes['model_file_mb']:.0f} MB; KV cache at n_ctx {sizes['n_ctx']}: "
        f"{sizes['kv_cache_mb']:.0f} MB."
    )
    verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
    print(f"First page: {ratio:.2f}× the bare app (target ≤ {TARGET_RATIO}×): {verdict}")
    typing = median("app", "can_type_s") if args.browser else chat
    print(
        f"The model was loaded {typing - engine:.2f} s before a person could type "
        f"({'yes' if engine <= typing else 'NO'}); it made its first reply "
        f"{ready - typing:+.2f} s from then."
    )
    if args.json:
        summary = {"first_page_ratio": ratio, "pass": ratio <= TARGET_RATIO}
        args.json.write_text(json.dumps({"runs": runs, "sizes": sizes, **summary}, indent=2))


if __name__ == "__main__":
    main()
