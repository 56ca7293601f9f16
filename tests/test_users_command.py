"""`python -m chatllm users add|reset|remove|list`, run as an operator runs it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chatllm.auth import Passwords
from chatllm.config import Settings
from chatllm.store import ChatDataLayer, Database, FileStore
from chatllm.store.users import Users
from tests.support import command_env, database_files, run_command


def password_hash(settings: Settings, name: str) -> str | None:
    async def read() -> str | None:
        database = Database(settings.database)
        try:
            return await Users(database, FileStore(settings.data_dir / "files")).password_hash(name)
        finally:
            await database.close()

    return asyncio.run(read())


def test_an_operator_adds_resets_lists_and_removes_users(
    tmp_path: Path, database_url: str, request: pytest.FixtureRequest
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=database_url)  # type: ignore[call-arg]
    postgres = request.getfixturevalue("postgres") if "postgresql" in database_url else None

    def users(*args: str, password: str | None = None) -> tuple[int, str]:
        """The command's exit status and what it printed (stdout, then stderr)."""
        typed = None if password is None else password + "\n"
        env = command_env(tmp_path, CHATLLM_DATABASE_URL=database_url)
        return run_command(env, "users", *args, stdin=typed)

    assert users("list") == (0, "(no users: local mode)")
    for name in ("bob", "ada"):
        code, said = users("add", name, "--password-stdin", password=f"{name}-pass-1")
        assert code == 0 and said.startswith(f"Added {name}.")
    assert users("list") == (0, "ada\nbob")
    # Only Argon2 hashes are kept: no password in the database's files.
    files = database_files(settings.database, tmp_path, postgres)
    assert any(b"$argon2" in f.read_bytes() for f in files)  # the files that hold users
    for file in files:
        assert b"ada-pass-1" not in file.read_bytes(), file

    # reset: the new password works, the old one no longer does
    assert users("reset", "ada", "--password-stdin", password="ada-pass-2") == (
        0,
        "Set a new password for ada.",
    )
    stored = password_hash(settings, "ada")
    assert stored is not None
    assert Passwords().verify(stored, "ada-pass-2")
    assert not Passwords().verify(stored, "ada-pass-1")

    # refused: a short password, an unknown user, a name taken; nothing changes
    code, said = users("reset", "ada", "--password-stdin", password="short")
    assert code == 1 and "at least 8 characters" in said
    assert password_hash(settings, "ada") == stored
    code, said = users("reset", "eve", "--password-stdin", password="eve-pass-1")
    assert code == 1 and "no user 'eve'" in said
    code, said = users("add", "bob", "--password-stdin", password="bob-pass-9")
    assert code == 1 and "already exists" in said
    assert users("list") == (0, "ada\nbob")

    # remove: the user and their threads go; the others stay
    async def seed() -> None:
        layer = ChatDataLayer(Database(settings.database), FileStore(tmp_path / "files"))
        for name in ("ada", "bob"):
            owner = await layer.get_user(name)
            assert owner is not None
            await layer.update_thread(f"{name}-thread", name=f"{name}'s", user_id=owner.id)
        await layer.close()

    asyncio.run(seed())
    code, said = users("remove", "bob", password="not bob")  # typed the wrong name
    assert code == 1 and "bob and their 1 thread(s)" in said and "nothing was removed" in said
    assert users("list") == (0, "ada\nbob")
    code, said = users("remove", "bob", password="bob")  # confirmed by name
    assert code == 0 and said.startswith("Removed bob and their threads.")  # stdout first
    assert users("list") == (0, "ada")
    code, said = users("remove", "bob", "--yes")
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
