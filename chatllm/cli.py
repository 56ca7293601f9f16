"""`python -m chatllm …`: users, threads, exports and sweeps from the command line.

    python -m chatllm users add NAME        ask for a password (or read it with --password-stdin)
    python -m chatllm users reset NAME      set a new password
    python -m chatllm users remove NAME     remove the user and all their threads
    python -m chatllm users list
    python -m chatllm threads [--user NAME] list saved threads
    python -m chatllm export THREAD_ID      a thread as JSON or Markdown (--format md)
    python -m chatllm import FILE           an exported JSON file as a new thread
    python -m chatllm sweep PROMPT --grid temperature=0.2,0.8 ...   compare settings in bulk
    python -m chatllm db copy --to URL  the whole store into another database (PostgreSQL)

Adding the first user turns password login on (restart the app); with no users the app
serves only on a loopback address, without a login.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatllm.auth import LOCAL_USER, Passwords
from chatllm.clock import readable_time
from chatllm.config import Settings, get_settings
from chatllm.errors import ChatLLMError
from chatllm.sampling import NUMERIC_FIELDS, Sampling, option_name

if TYPE_CHECKING:
    from chatllm.store import ChatDataLayer

# Each command imports what it needs when it runs: `sweep` loads the models but neither
# Chainlit nor the store, the others the store but no model.


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
    from chatllm.store import FileStore, migrated
    from chatllm.store.users import Users

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


@asynccontextmanager
async def _open_store(settings: Settings) -> AsyncIterator[ChatDataLayer]:
    from chatllm.store import ChatDataLayer, FileStore, migrated

    async with migrated(settings.database) as database:
        yield ChatDataLayer(database, FileStore(settings.data_dir / "files"))


async def _threads(args: argparse.Namespace, settings: Settings) -> str:
    from chatllm.export import conversation_steps, stored_user

    async with _open_store(settings) as store:
        user = await stored_user(store, args.user, create_local=False)
        if user is None:
            return f"(no threads for {args.user})"
        rows = []
        for listed in await store.user_threads(user.id, search=args.search, limit=args.limit):
            # Every branch's messages, not only those of the path a page shows.
            thread = await store.whole_thread(listed["id"])
            count = len(conversation_steps(thread)) if thread is not None else 0
            rows.append(
                (
                    listed["id"],
                    readable_time(listed["createdAt"]),
                    str(count),
                    _printable(listed["name"]),
                )
            )
    if not rows:
        return f"(no threads for {args.user})"
    table = [("ID", "UPDATED", "MESSAGES", "NAME"), *rows]
    widths = [max(len(row[column]) for row in table) for column in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + f"  {row[3]}"
        for row in table
    )


async def _export(args: argparse.Namespace, settings: Settings) -> str:
    from chatllm.export import TransferError, export_thread
    from chatllm.markdown import to_markdown

    async with _open_store(settings) as store:
        document = await export_thread(store, args.thread_id)
    form = args.format or ("md" if args.output and args.output.suffix == ".md" else "json")
    if form == "md":
        text = to_markdown(document, args.lang)
    else:
        text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    if args.output is None:
        return text.rstrip("\n")
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise TransferError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    return f"Exported {len(document['messages'])} messages to {args.output}."


async def _import(args: argparse.Namespace, settings: Settings) -> str:
    from chatllm.export import (
        MAX_DOCUMENT_MB,
        InvalidDocument,
        TransferError,
        document_text,
        import_thread,
        load_document,
    )

    most = MAX_DOCUMENT_MB * 1024 * 1024
    try:
        if str(args.file) == "-":
            stream = getattr(sys.stdin, "buffer", None)  # a text stream where stdin is replaced
            data = stream.read(most + 1) if stream else sys.stdin.read(most + 1).encode()
        elif args.file.stat().st_size > most:
            data = b"x" * (most + 1)  # not read: it is too big anyway
        else:
            data = args.file.read_bytes()
    except OSError as exc:
        raise TransferError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    if len(data) > most:
        raise InvalidDocument(f"{args.file} is over {MAX_DOCUMENT_MB} MB; no export is that big")
    document = load_document(document_text(data, str(args.file)))
    async with _open_store(settings) as store:
        thread_id = await import_thread(store, document, args.user)
    return f"Imported as thread {thread_id}: open /thread/{thread_id}"


async def _db(args: argparse.Namespace, settings: Settings) -> str:
    from chatllm.store import migrated
    from chatllm.store.copy import CopyError, copy_store, shown, summary
    from chatllm.store.sqlite import sqlite_path

    source_url = args.source or settings.database
    try:
        if source_url.startswith("sqlite") and not sqlite_path(source_url).is_file():
            raise CopyError(f"there is no database at {sqlite_path(source_url)}")
    except ValueError as exc:
        raise CopyError(str(exc)) from None

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report(f"Copying {shown(source_url)} to {shown(args.target)}")
    async with migrated(source_url) as source, migrated(args.target) as target:
        found = await copy_store(source, target, resume=args.resume, report=report)
    return summary(found) + " Every table holds as many rows as the source's."


def _register_db(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = commands.add_parser("db", help="move the store to another database")
    actions = db.add_subparsers(dest="action", required=True)
    copy = actions.add_parser(
        "copy",
        help="copy users, threads, messages, elements and presets to another database",
        description="Copy every user, thread, message, feedback, element and preset to another"
        " database (SQLite or PostgreSQL) and rebuild its search index. Stop the app first."
        " Element files stay in the data directory's files folder.",
    )
    copy.add_argument(
        "--from",
        dest="source",
        metavar="URL",
        help="the database to copy (default: the app's, CHATLLM_DATABASE_URL or"
        " DATA_DIR/chatllm.db)",
    )
    copy.add_argument(
        "--to",
        dest="target",
        metavar="URL",
        required=True,
        help="where to, e.g. postgresql+asyncpg://chatllm@127.0.0.1/chatllm (it must be empty)",
    )
    copy.add_argument(
        "--resume",
        action="store_true",
        help="the target holds an interrupted copy of this source: copy what is missing",
    )
    db.set_defaults(handler=_db)


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


def _register_threads(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    threads = commands.add_parser("threads", help="list a user's threads")
    threads.add_argument(
        "--user", default=LOCAL_USER, help=f"whose threads (default: {LOCAL_USER})"
    )
    threads.add_argument("--search", help="only threads whose name or messages match")
    threads.add_argument("--limit", type=_positive, default=20, help="at most this many")
    threads.set_defaults(handler=_threads)

    export = commands.add_parser("export", help="a thread as JSON or Markdown, receipts included")
    export.add_argument("thread_id")
    export.add_argument(
        "--format", choices=("json", "md"), help="default: md for an -o FILE.md, else json"
    )
    export.add_argument("--lang", default="en", help="Markdown's language: en, zh-TW or zh-CN")
    export.add_argument("-o", "--output", type=Path, help="write to this file, not stdout")
    export.set_defaults(handler=_export)

    imports = commands.add_parser("import", help="a JSON export as a new thread")
    imports.add_argument("file", type=Path, help="the JSON export; - reads stdin")
    imports.add_argument(
        "--user", default=LOCAL_USER, help=f"the new owner (default: {LOCAL_USER})"
    )
    imports.set_defaults(handler=_import)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _printable(text: str | None) -> str:
    """A name safe to print on a terminal: one line, no control characters."""
    return " ".join("".join(c if c.isprintable() else " " for c in text or "").split())


#: Each command's parser sets a `handler(args, settings) -> str` coroutine.
Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, str]]


def parser() -> argparse.ArgumentParser:
    """`python -m chatllm` and every subcommand."""
    root = argparse.ArgumentParser(prog="python -m chatllm", description=__doc__.split("\n")[0])
    commands = root.add_subparsers(dest="command", required=True)
    _register_users(commands)
    _register_threads(commands)
    _register_sweep(commands)
    _register_db(commands)
    return root


class _Brief(logging.Formatter):
    """One line a record, on a terminal: what went wrong, without the traceback (the
    command's own last line says what it means for the user)."""

    def formatException(self, ei: Any) -> str:
        return ""


def main(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    args = parser().parse_args(argv)
    handler: Handler = args.handler
    if not logging.getLogger().handlers:  # as a command (a test's caller may have its own)
        terminal = logging.StreamHandler()
        terminal.setFormatter(_Brief("%(levelname)s: %(message)s"))
        logging.basicConfig(level=logging.WARNING, handlers=[terminal])
    try:
        print(asyncio.run(handler(args, settings or get_settings())))
    except ChatLLMError as exc:
        print(f"chatllm: {exc}", file=sys.stderr)
        return 1
    return 0
