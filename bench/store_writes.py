"""CPU per write through the store: its statements made once (`chatllm.store.dialect.sql`)
beside SQLAlchemy's `text()` built afresh for each, side by side in one process.

Each chat turn writes through the data layer several times (the user's message with the
session's metadata, Chainlit's run step created and updated, the reply), on the web
process's event loop, and under load that process is CPU-bound (bench/load.py). Two kinds
of write, each as the app makes it, on the CPU clock of this process
(`time.process_time`, so PostgreSQL's own work is not counted):

  message  `save_message`: a user message and the thread's metadata in one transaction;
  step     `create_step`, then `update_step` of the same run step.

The two ways alternate round by round on one database; the table shows each one's median
CPU per write and the ratio. `--dialects sqlite,postgresql` also runs them on a PostgreSQL
server this script starts on loopback (Debian's binaries, as the tests do).

    .venv/bin/python bench/store_writes.py [--rounds 9] [--writes 300]
        [--dialects sqlite] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import pkgutil
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import sqlalchemy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import chatllm.store  # noqa: E402
from chatllm.store import ChatDataLayer, Database, FileStore  # noqa: E402
from chatllm.store import dialect as dialects  # noqa: E402

for _module in pkgutil.iter_modules(chatllm.store.__path__, "chatllm.store."):
    importlib.import_module(_module.name)
MADE_ONCE = dialects.sql
#: Every module of the store that runs its SQL through `sql` (the one defining it aside).
USERS_OF_SQL = [
    module
    for name, module in sys.modules.items()
    if name.startswith("chatllm.store.")
    and module is not dialects
    and getattr(module, "sql", None) is MADE_ONCE
]
WAYS = ("made once", "text() each time")
KINDS = ("message", "step")


@contextmanager
def built_each_time() -> Iterator[None]:
    """The store as it was: every statement a new `text()`."""
    for module in USERS_OF_SQL:
        module.sql = sqlalchemy.text  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module in USERS_OF_SQL:
            module.sql = MADE_ONCE  # type: ignore[attr-defined]


def step(thread: str, kind: str, text: str) -> Any:  # a StepDict
    return {
        "id": uuid.uuid4().hex,
        "threadId": thread,
        "type": kind,
        "name": "on_message" if kind == "run" else "User",
        "output": text,
        "createdAt": "2026-01-01T00:00:00.000000Z",
    }


async def measure(url: str, files: Path, rounds: int, writes: int) -> dict[str, Any]:
    database = Database(url)
    await database.migrate()
    store = ChatDataLayer(database, FileStore(files))
    thread = uuid.uuid4().hex
    await store.update_thread(thread, name="bench", metadata={"chat_settings": {"t": 0.7}})

    async def message() -> None:
        await store.save_message(
            step(thread, "user_message", "How far can a lighthouse be seen?"),
            thread_metadata={"chat_settings": {"temperature": 0.7}},
        )

    async def run_step() -> None:
        made = step(thread, "run", "")
        await store.create_step(made)
        made["output"], made["end"] = "done", "2026-01-01T00:00:01.000000Z"
        await store.update_step(made)

    kinds: dict[str, Callable[[], Awaitable[None]]] = {"message": message, "step": run_step}
    cpu: dict[str, dict[str, list[float]]] = {w: {k: [] for k in KINDS} for w in WAYS}
    try:
        for n in range(rounds + 1):  # the first round warms both ways up, and is dropped
            for way in WAYS if n % 2 == 0 else WAYS[::-1]:
                for kind, write in kinds.items():
                    with built_each_time() if way == WAYS[1] else nullcontext():
                        began = time.process_time()
                        for _ in range(writes):
                            await write()
                        spent = (time.process_time() - began) / writes * 1000
                    if n:
                        cpu[way][kind].append(spent)
    finally:
        await store.close()
    medians = {w: {k: statistics.median(cpu[w][k]) for k in KINDS} for w in WAYS}
    return {
        "ms_per_write": medians,
        "ratio": {k: medians[WAYS[0]][k] / medians[WAYS[1]][k] for k in KINDS},
        "rounds": rounds,
        "writes": writes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="measured rounds per way (9)")
    parser.add_argument("--writes", type=int, default=300, help="writes per round (300)")
    parser.add_argument("--dialects", default="sqlite", help="sqlite, postgresql or both")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    wanted = [d.strip() for d in args.dialects.split(",") if d.strip()]
    if unknown := set(wanted) - {"sqlite", "postgresql"}:
        parser.error(f"unknown dialect {', '.join(sorted(unknown))}")
    root = Path(tempfile.mkdtemp(prefix="chatllm-store-writes-"))
    results: dict[str, Any] = {}
    server = None
    try:
        for name in wanted:
            if name == "sqlite":
                url = f"sqlite+aiosqlite:///{root / 'chatllm.db'}"
            else:
                from deploy.postgres import PostgresServer

                server = PostgresServer().start()
                url = server.new_database()
            results[name] = asyncio.run(measure(url, root / name, args.rounds, args.writes))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)

    print(f"CPU per write, ms (medians of {args.rounds} rounds of {args.writes}, alternating)")
    print(f"{'dialect':<11} {'write':<8} {WAYS[0]:>10} {WAYS[1]:>17} {'ratio':>6}")
    for name, result in results.items():
        for kind in KINDS:
            once, each = (result["ms_per_write"][w][kind] for w in WAYS)
            print(f"{name:<11} {kind:<8} {once:>10.3f} {each:>17.3f} {result['ratio'][kind]:>6.2f}")
    if args.json:
        args.json.write_text(json.dumps({"dialects": results}, indent=2), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
