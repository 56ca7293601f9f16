"""Opening a branched thread (issue 26): the data layer's `get_thread`, which serves the
path to the thread's active leaf, on threads with branches beside a flat thread of the
same size, side by side in one process, on SQLite (and PostgreSQL with
`--dialects sqlite,postgresql`, on a server this script starts on loopback).

  flat 200        a 200-step thread with no branch (the reference: today's open)
  200 / 20        200 steps, 20 of them regenerated replies (20 forks)
  2000 / 100      2,000 messages, 100 branches (an edit-like fork every 20 messages)
  switch 2000     `choose_branch` on the 2,000-message thread (saving a switch)

Each figure is the median of `--repeat` opens (after two warm-up opens), with p90.
Targets: 200 / 20 within 10 ms as the flat one; 2000 / 100 within 50 ms.

`--browser /usr/bin/chromium` also starts the app (as `make run` does) on a 180-message
thread with 10 forks and times, in the page (frame by frame, so Playwright's polling adds
nothing), a click on a switcher until the other path is painted, each `--switches` times:
at the last fork (the 162 messages above it stay: 18 messages against 3) and at the first
(the whole path changes: 180 messages against 3), beside the long path opened by a page
load. Target: within 300 ms.

Why not send only what changes: Chainlit 2.12's page re-renders every message on every
message event (its messages share a context that changes with each), ~60 ms an event at
180 messages here, so a switch sent as 21 events (18 removed, 3 added) took 1.1-1.6 s
against one whole path's ~250 ms. The whole path, in one `resume_thread`, is the least
the page allows; its cost is the page mounting each message it did not show (~2.6 ms a
message on this 2-core machine).

    .venv/bin/python bench/tree.py [--repeat 30] [--dialects sqlite] [--browser PATH]
        [--switches 10] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chatllm.auth import LOCAL_USER  # noqa: E402
from chatllm.store import ChatDataLayer, Database, FileStore  # noqa: E402
from chatllm.store.tree import Placement  # noqa: E402

WORDS = "the lighthouse keeper watched the ships pass through the fog at night".split()


def _text(n: int, words: int = 40) -> str:
    return " ".join(WORDS[(n + k) % len(WORDS)] for k in range(words))


def _stamp(n: int) -> str:
    return f"2026-03-01T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000000Z"


async def _thread(
    layer: ChatDataLayer, thread: str, messages: int, branches: int, user: str | None = None
) -> None:
    """`messages` messages on the main path (user, reply, ...), and `branches` forks: a
    regenerated reply with one more exchange under it, spread along the path. Each reply
    carries a receipt-sized metadata, as the app's do."""
    await layer.update_thread(thread, name=thread, user_id=user)
    clock = 0

    def tick() -> str:
        nonlocal clock
        clock += 1
        return _stamp(clock)

    receipt = {"receipt": {"model": "m", "sampling": {"temperature": 0.7, "seed": 1}}}
    replies: list[tuple[str, str]] = []
    leaf: str | None = None
    for n in range(messages // 2):
        user, reply = f"{thread}-u{n}", f"{thread}-r{n}"
        await layer.save_message(
            {
                "id": user,
                "threadId": thread,
                "type": "user_message",
                "output": _text(n),
                "createdAt": tick(),
            },
            place=Placement(leaf),
        )
        await layer.save_message(
            {
                "id": reply,
                "threadId": thread,
                "type": "assistant_message",
                "output": _text(n, 80),
                "createdAt": tick(),
                "metadata": {"kind": "reply", "reply_to": user, "finish_reason": "stop", **receipt},
            },
        )
        replies.append((user, reply))
        leaf = reply
    every = max(1, len(replies) // max(branches, 1))
    for b in range(branches):
        user, _ = replies[min(b * every, len(replies) - 1)]
        variant = f"{thread}-v{b}"
        await layer.save_message(
            {
                "id": variant,
                "threadId": thread,
                "type": "assistant_message",
                "output": _text(b, 80),
                "createdAt": tick(),
                "metadata": {
                    "kind": "variant",
                    "reply_to": user,
                    "finish_reason": "stop",
                    **receipt,
                },
            },
        )
        await layer.save_message(
            {
                "id": f"{thread}-vu{b}",
                "threadId": thread,
                "type": "user_message",
                "output": _text(b),
                "createdAt": tick(),
            },
            place=Placement(variant),
        )
    # Back on the main path, whole, as a person comparing would leave it: the page serves
    # all its messages.
    await layer.choose_branch(thread, replies[-1][1])


async def _timed(call: Callable[[], Awaitable[object]], repeat: int) -> dict[str, float]:
    for _ in range(2):
        await call()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 2),
        "p90_ms": round(samples[int(len(samples) * 0.9) - 1], 2),
    }


async def measure(url: str, files: Path, repeat: int) -> dict[str, Any]:
    db = Database(url)
    await db.migrate()
    layer = ChatDataLayer(db, FileStore(files))
    await _thread(layer, "flat200", 200, 0)
    await _thread(layer, "tree200", 180, 10)  # 180 + 10 variants + 10 messages = 200
    await _thread(layer, "tree2000", 1800, 100)  # 1,800 + 200 = 2,000
    counts = {
        name: len((await layer.whole_thread(name) or {"steps": []})["steps"])
        for name in ("flat200", "tree200", "tree2000")
    }
    figures: dict[str, Any] = {"steps": counts}
    # Interleaved rounds, so that the machine's noise falls on each alike.
    for name in ("flat200", "tree200", "tree2000"):
        figures[name] = await _timed(lambda n=name: layer.get_thread(n), repeat)  # type: ignore[misc]
    served = {
        name: len((await layer.get_thread(name) or {"steps": []})["steps"])
        for name in ("flat200", "tree200", "tree2000")
    }
    figures["served"] = served
    figures["switch2000"] = await _timed(
        lambda: layer.choose_branch("tree2000", "tree2000-v50"), repeat
    )
    await layer.close()
    return figures


def _serve(data: Path, port: int) -> subprocess.Popen[bytes]:
    """The app as `make run` starts it, on `data`, once its page answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATLLM_", "CHAINLIT_"))}
    env["CHATLLM_DATA_DIR"] = str(data)
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "chainlit"), "run", "app.py", "--headless",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=(data / "app.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    for _ in range(600):  # bounded: two minutes
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the app did not start")


#: In the page: once the page shows its `before` switchers (each is drawn a moment after
#: its message: a click before the last is drawn hit the one above it), click the first or
#: last switcher's arrow and wait, frame by frame, until it says `label`, the page shows
#: `after` switchers and its last user message is `want`; then one more frame (the new
#: path painted). Timed in the page, so Playwright's polling adds nothing.
SWITCH_JS = """async ({which, name, label, want, before, after}) => {
  const forks = () => document.querySelectorAll('.chatllm-branches');
  const fork = () => {
    const all = forks();
    return which === 'first' ? all[0] : all[all.length - 1];
  };
  // The arrow is disabled until the page has the answer to the switch before (the
  // server ends that action after the path is shown): a click then would do nothing.
  const ready = performance.now();
  const button = () => fork()?.querySelector(`button[aria-label="${name}"]`);
  await new Promise((resolve, reject) => {
    const check = () => {
      if (performance.now() - ready > 30000) reject(new Error(`${name} stays disabled`));
      else if (forks().length === before && button() && !button().disabled) resolve();
      else requestAnimationFrame(check);
    };
    check();
  });
  const start = performance.now();
  button().click();
  await new Promise((resolve, reject) => {
    const check = () => {
      if (performance.now() - start > 30000) {
        const shown = [...forks()].map((f) => f.textContent).join(" ");
        const users = document.querySelectorAll('[data-step-type="user_message"]');
        const end = users.length ? users[users.length - 1].textContent.slice(0, 40) : "";
        reject(new Error(`not ${label} / ${want.slice(0, 40)}: ${shown} / ${end}`));
      }
      const users = document.querySelectorAll('[data-step-type="user_message"]');
      const last = users[users.length - 1];
      const f = fork();
      const done = f && f.textContent.includes(label) && forks().length === after;
      if (done && last && last.textContent.trim() === want) resolve();
      else requestAnimationFrame(check);
    };
    check();
  });
  await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  return performance.now() - start;
}"""


def browser_switches(chromium: str, switches: int) -> dict[str, Any]:
    """Click a switcher in Chromium, to its short branch and back, timing each in the page
    until the other path's last message is on it: the first fork (the whole path changes:
    3 messages against 180) and the last (the 162 messages above it stay; 3 against 18)."""
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)

        async def seed() -> None:
            db = Database(f"sqlite+aiosqlite:///{data / 'chatllm.db'}")
            await db.migrate()
            layer = ChatDataLayer(db, FileStore(data / "files"))
            user = await layer.ensure_user(LOCAL_USER)
            assert user is not None
            await _thread(layer, "tree200", 180, 10, user.id)
            await layer.close()

        asyncio.run(seed())
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        app = _serve(data, port)
        timings: dict[str, list[float]] = {
            "first fork, to short": [],
            "first fork, to long": [],
            "last fork, to short": [],
            "last fork, back": [],
            "page load (reference)": [],
        }
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"]
                )
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.goto(f"http://127.0.0.1:{port}/thread/tree200")
                fork = page.locator(".chatllm-branches").first
                expect(fork).to_contain_text("1/2", timeout=120_000)
                last = page.locator('[data-step-type="user_message"]').last
                expect(last).to_have_text(_text(89), timeout=60_000)
                # The last fork on the main path is the reply to its 82nd message (forks
                # every 9 replies); its other version is followed by branch 9's message.
                for which, (short, long) in (
                    ("first", ("first fork, to short", "first fork, to long")),
                    ("last", ("last fork, to short", "last fork, back")),
                ):
                    for n in range(switches * 2):
                        there = n % 2 == 0
                        ms = page.evaluate(
                            SWITCH_JS,
                            {
                                "which": which,
                                "name": "Next version" if there else "Previous version",
                                "label": "2/2" if there else "1/2",
                                # The long path has a switcher at each of its 10 forks;
                                # the first fork's branch one; the last fork's 10 again.
                                "before": 10 if there or which == "last" else 1,
                                "after": 1 if there and which == "first" else 10,
                                "want": _text(0 if which == "first" else 9) if there else _text(89),
                            },
                        )
                        timings[short if there else long].append(ms)
                # The reference: the same long path opened by a page load (Chainlit's resume).
                for _ in range(switches):
                    start = time.perf_counter()
                    page.reload()
                    expect(last).to_have_text(_text(89), timeout=60_000)
                    expect(fork).to_contain_text("1/2", timeout=30_000)
                    timings["page load (reference)"].append((time.perf_counter() - start) * 1000)
                browser.close()
        except Exception:
            print((data / "app.log").read_text(errors="replace")[-4000:], file=sys.stderr)
            raise
        finally:
            app.terminate()
            app.wait(timeout=30)
    return {
        name: {
            "median_ms": round(statistics.median(samples), 1),
            "max_ms": round(max(samples), 1),
        }
        for name, samples in timings.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--dialects", default="sqlite")
    parser.add_argument("--browser", default="", help="Chromium, to time a switch on the page")
    parser.add_argument("--switches", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dialect in args.dialects.split(","):
            if dialect == "sqlite":
                url = f"sqlite+aiosqlite:///{tmp}/tree.db"
                results[dialect] = asyncio.run(measure(url, Path(tmp) / "files", args.repeat))
            else:
                from deploy.postgres import PostgresServer

                server = PostgresServer().start()
                try:
                    url = server.new_database()
                    results[dialect] = asyncio.run(measure(url, Path(tmp) / "files", args.repeat))
                finally:
                    server.stop()
    print(
        f"{'':12} {'steps':>7} {'flat 200':>14} {'200 / 20':>14} {'2000 / 100':>14} {'switch':>14}"
    )
    for dialect, f in results.items():
        cells = [
            f"{f[k]['median_ms']:6.2f} ({f[k]['p90_ms']:5.2f})"
            for k in ("flat200", "tree200", "tree2000", "switch2000")
        ]
        steps = "/".join(str(f["steps"][k]) for k in ("flat200", "tree200", "tree2000"))
        print(f"{dialect:12} {steps:>14} " + " ".join(f"{c:>14}" for c in cells))
    print("ms, median (p90); targets: 200 / 20 <= 10 ms, 2000 / 100 <= 50 ms")
    if args.browser:
        results["chromium"] = browser_switches(args.browser, args.switches)
        for name, figure in results["chromium"].items():
            target = "" if "reference" in name else " (target <= 300 ms)"
            print(
                f"chromium {name}: median {figure['median_ms']} ms,"
                f" max {figure['max_ms']} ms{target}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), "utf-8")


if __name__ == "__main__":
    main()
