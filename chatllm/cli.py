"""`python -m chatllm …`: users, threads, exports and sweeps from the command line.

    python -m chatllm users add NAME        ask for a password (or read it with --password-stdin)
    python -m chatllm users reset NAME      set a new password
    python -m chatllm users remove NAME     remove the user and all their threads
    python -m chatllm users list
    python -m chatllm threads [--user NAME] list saved threads
    python -m chatllm export THREAD_ID      a thread as JSON or Markdown (--format md)
    python -m chatllm import FILE           an exported JSON file as a new thread
    python -m chatllm sweep PROMPT --grid temperature=0.2,0.8 ...   compare settings in bulk

Adding the first user turns password login on (restart the app); with no users the app
serves only on a loopback address, without a login.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from chatllm.auth import Passwords
from chatllm.config import Settings, get_settings
from chatllm.errors import ChatLLMError
from chatllm.sampling import NUMERIC_FIELDS, Sampling, option_name
from chatllm.store import FileStore, migrated
from chatllm.store.users import Users


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat it: ") != password:
            raise ChatLLMError("the passwords differ")
    if len(password) < 8:
        raise ChatLLMError("a password needs at least 8 characters")
    return password


async def _users(args: argparse.Namespace, settings: Settings) -> str:
    async with migrated(settings.database) as database:
        users = Users(database, FileStore(settings.data_dir / "files"))
        if args.action == "list":
            return "\n".join(await users.with_passwords()) or "(no users: local mode)"
        if args.action == "remove":
            if not args.yes:
                threads = await users.thread_count(args.name)
                print(
                    f"Remove {args.name} and their {threads} thread(s), for good? "
                    "Type the name to confirm: ",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
                if sys.stdin.readline().strip() != args.name:
                    raise ChatLLMError("not confirmed; nothing was removed")
            await users.remove(args.name)
            return f"Removed {args.name} and their threads."
        password_hash = Passwords().hash(_read_password(args))
        if args.action == "add":
            await users.add(args.name, password_hash)
            return f"Added {args.name}. Restart the app if it runs without a login."
        await users.set_password(args.name, password_hash)
        return f"Set a new password for {args.name}."


async def _sweep(args: argparse.Namespace, settings: Settings) -> str:
    from chatllm.sweep import sweep_command  # the models and plots load for this one only

    return await sweep_command(args, settings)


def _register_users(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    users = commands.add_parser("users", help="add, reset, remove or list login users")
    actions = users.add_subparsers(dest="action", required=True)
    for action in ("add", "reset", "remove"):
        sub = actions.add_parser(action)
        sub.add_argument("name")
        if action != "remove":
            sub.add_argument(
                "--password-stdin", action="store_true", help="read the password from stdin"
            )
        else:
            sub.add_argument(
                "--yes", action="store_true", help="do not ask to confirm (for scripts)"
            )
    actions.add_parser("list")
    users.set_defaults(handler=_users)


def _register_sweep(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="run one prompt over a grid of sampling values and plot the replies",
        description="Run one prompt over a grid of sampling values, several times per cell, "
        "and write every reply with its receipt (CSV, JSON), a summary per cell and heatmaps.",
    )
    sweep.add_argument("prompt", help="the message sent to the model in every run")
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=V1,V2,…",
        help="a sampling value to vary and its values; repeatable. "
        f"NAME: {', '.join(NUMERIC_FIELDS)}",
    )
    sweep.add_argument(
        "--repeats", type=int, default=3, metavar="N", help="runs per cell (default 3)"
    )
    sweep.add_argument(
        "--profile",
        metavar="BACKEND:MODEL",
        help="the model, as in the chat-profile menu (default: the local model)",
    )
    sweep.add_argument(
        "--seed",
        type=int,
        metavar="S",
        help="run r of every cell uses seed S+r (default: a fresh seed per run)",
    )
    for name, field in Sampling.model_fields.items():
        if name in NUMERIC_FIELDS and name != "seed":
            sweep.add_argument(
                option_name(name),
                dest=name,
                metavar="VALUE",
                type=int if field.annotation is int else float,
                help=f"{name} for every run (default {field.default})",
            )
    sweep.add_argument("--system-prompt", metavar="TEXT", help="default: CHATLLM_SYSTEM_PROMPT")
    sweep.add_argument(
        "--concurrency",
        type=int,
        default=4,
        metavar="N",
        help="requests in flight to an OpenAI-compatible endpoint (default 4); "
        "the local model runs one at a time",
    )
    sweep.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder (default: DATA_DIR/sweeps/<UTC time>)",
    )
    sweep.add_argument("--force", action="store_true", help="overwrite an earlier sweep in --out")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.set_defaults(handler=_sweep)


#: Each command's parser sets a `handler(args, settings) -> str` coroutine.
Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, str]]


def parser() -> argparse.ArgumentParser:
    """`python -m chatllm` and every subcommand."""
    from chatllm import transfer

    root = argparse.ArgumentParser(prog="python -m chatllm", description=__doc__.split("\n")[0])
    commands = root.add_subparsers(dest="command", required=True)
    _register_users(commands)
    transfer.register(commands)
    _register_sweep(commands)
    return root


def main(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    args = parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        print(asyncio.run(handler(args, settings or get_settings())))
    except ChatLLMError as exc:
        print(f"chatllm: {exc}", file=sys.stderr)
        return 1
    return 0
