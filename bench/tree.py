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

    .venv/bin/python bench/tree.py [--repeat 30] [--dialects sqlite] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chatllm.store import ChatDataLayer, Database, FileStore  # noqa: E402
from chatllm.store.tree import Placement  # noqa: E402

WORDS = "the lighthouse keeper watched the ships pass through the fog at night".split()


def _text(n: int, words: int = 40) -> str:
    return " ".join(WORDS[(n + k) % len(WORDS)] for k in range(words))


def _stamp(n: int) -> str:
    return f"2026-03-01T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000000Z"


async def _thread(layer: ChatDataLayer, thread: str, messages: int, branches: int) -> None:
    """`messages` messages on the main path (user, reply, ...), and `branches` forks: a
    regenerated reply with one more exchange under it, spread along the path. Each reply
    carries a receipt-sized metadata, as the app's do."""
    await layer.update_thread(thread, name=thread)
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
    # Back on the main path, as a person comparing would leave it.
    await layer.choose_branch(thread, f"{thread}-r0")


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
    figures["switch2000"] = await _timed(
        lambda: layer.choose_branch("tree2000", "tree2000-v50"), repeat
    )
    await layer.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--dialects", default="sqlite")
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
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), "utf-8")


if __name__ == "__main__":
    main()
