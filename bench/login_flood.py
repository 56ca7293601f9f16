"""A chat turn while anyone floods the login: does a signed-in user's reply slow down?

Starts the app in password mode, signs one user in, and times a short chat turn (message
sent → reply finished) alone, then while 100 logins with wrong passwords arrive at once
from other clients, alternating. Logins are throttled per address and Argon2 checks run
one at a time, so the flood should cost the chat little.

    .venv/bin/python bench/login_flood.py [--rounds 3] [--logins 100] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import socketio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from durability import ROOT, App, Chat

PASSWORD = "a-long-password-1"


async def signed_in_chat(base: str) -> tuple[Chat, socketio.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.post(base + "/login", data={"username": "ada", "password": PASSWORD})
        answer.raise_for_status()
        cookies = answer.cookies
    chat = Chat(base)
    client = await chat.open(cookies=dict(cookies))
    return chat, client


async def turn(chat: Chat, client: socketio.AsyncClient) -> float:
    began = time.perf_counter()
    assert await chat.send(client, "Name a colour.")
    return time.perf_counter() - began


async def flood(base: str, count: int) -> dict[str, int]:
    statuses: dict[str, int] = {}

    async def guess(n: int) -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            answer = await http.post(
                base + "/login", data={"username": f"guess{n}", "password": "wrong-guess"}
            )
        statuses[str(answer.status_code)] = statuses.get(str(answer.status_code), 0) + 1

    await asyncio.gather(*(guess(n) for n in range(count)))
    return statuses


async def measure(data_dir: Path, rounds: int, logins: int) -> dict[str, Any]:
    app = App(data_dir)
    try:
        chat, client = await signed_in_chat(app.base)
        await turn(chat, client)  # warm
        quiet, flooded, answers = [], [], []
        for _ in range(rounds):
            quiet.append(await turn(chat, client))
            flooding = asyncio.create_task(flood(app.base, logins))
            await asyncio.sleep(0.2)  # the guesses are in
            flooded.append(await turn(chat, client))
            answers.append(await flooding)
        await client.shutdown()
    finally:
        app.kill()
    return {
        "quiet_s": round(statistics.median(quiet), 3),
        "flooded_s": round(statistics.median(flooded), 3),
        "ratio": round(statistics.median(flooded) / statistics.median(quiet), 2),
        "login_answers": answers,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--logins", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatllm-flood-") as tmp:
        data_dir = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "chatllm", "users", "add", "ada", "--password-stdin"],
            input=PASSWORD + "\n",
            text=True,
            cwd=ROOT,
            env={"CHATLLM_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
            check=True,
            capture_output=True,
        )
        figures = asyncio.run(measure(data_dir, args.rounds, args.logins))
    print(
        f"chat turn alone {figures['quiet_s']} s, during {args.logins} logins at once "
        f"{figures['flooded_s']} s (×{figures['ratio']}); login answers: "
        f"{figures['login_answers']}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
