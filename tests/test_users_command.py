"""`python -m chatllm users add|reset|remove|list`, run as an operator runs it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chatllm.auth import Passwords
from chatllm.config import Settings
from chatllm.store import ChatDataLayer, Database, FileStore
from chatllm.store.users import Users
from tests.support import command_env, run_command


def users(data_dir: Path, *args: str, password: str | None = None) -> tuple[int, str]:
    """The command's exit status and what it printed (stdout, then stderr)."""
    typed = None if password is None else password + "\n"
    return run_command(command_env(data_dir), "users", *args, stdin=typed)


def password_hash(settings: Settings, name: str) -> str | None:
    async def read() -> str | None:
        database = Database(settings.database)
        try:
            return await Users(database, FileStore(settings.data_dir / "files")).password_hash(name)
        finally:
            await database.close()

    return asyncio.run(read())


def test_an_operator_adds_resets_lists_and_removes_users(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert users(tmp_path, "list") == (0, "(no users: local mode)")
    for name in ("bob", "ada"):
        code, said = users(tmp_path, "add", name, "--password-stdin", password=f"{name}-pass-1")
        assert code == 0 and said.startswith(f"Added {name}.")
    assert users(tmp_path, "list") == (0, "ada\nbob")
    # Only Argon2 hashes are kept: no password in the database file.
    for file in tmp_path.glob("chatllm.db*"):  # the database, its WAL and shared memory
        assert b"ada-pass-1" not in file.read_bytes(), file

    # reset: the new password works, the old one no longer does
    assert users(tmp_path, "reset", "ada", "--password-stdin", password="ada-pass-2") == (
        0,
        "Set a new password for ada.",
    )
    stored = password_hash(settings, "ada")
    assert stored is not None
    assert Passwords().verify(stored, "ada-pass-2")
    assert not Passwords().verify(stored, "ada-pass-1")

    # refused: a short password, an unknown user, a name taken; nothing changes
    code, said = users(tmp_path, "reset", "ada", "--password-stdin", password="short")
    assert code == 1 and "at least 8 characters" in said
    assert password_hash(settings, "ada") == stored
    code, said = users(tmp_path, "reset", "eve", "--password-stdin", password="eve-pass-1")
    assert code == 1 and "no user 'eve'" in said
    code, said = users(tmp_path, "add", "bob", "--password-stdin", password="bob-pass-9")
    assert code == 1 and "already exists" in said
    assert users(tmp_path, "list") == (0, "ada\nbob")

    # remove: the user and their threads go; the others stay
    async def seed() -> None:
        layer = ChatDataLayer(Database(settings.database), FileStore(tmp_path / "files"))
        for name in ("ada", "bob"):
            owner = await layer.get_user(name)
            assert owner is not None
            await layer.update_thread(f"{name}-thread", name=f"{name}'s", user_id=owner.id)
        await layer.close()

    asyncio.run(seed())
    code, said = users(tmp_path, "remove", "bob", password="not bob")  # typed the wrong name
    assert code == 1 and "bob and their 1 thread(s)" in said and "nothing was removed" in said
    assert users(tmp_path, "list") == (0, "ada\nbob")
    code, said = users(tmp_path, "remove", "bob", password="bob")  # confirmed by name
    assert code == 0 and said.startswith("Removed bob and their threads.")  # stdout first
    assert users(tmp_path, "list") == (0, "ada")
    code, said = users(tmp_path, "remove", "bob", "--yes")
    assert code == 1 and "no user 'bob'" in said

    async def threads() -> list[str | None]:
        layer = ChatDataLayer(Database(settings.database), FileStore(tmp_path / "files"))
        try:
            return [
                (await layer.get_thread(f"{name}-thread") or {}).get("name")
                for name in ("ada", "bob")
            ]
        finally:
            await layer.close()

    assert asyncio.run(threads()) == ["ada's", None]
