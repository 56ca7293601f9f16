"""Numbered schema migrations. Append new ones; never edit one that has shipped.

Migration N is MIGRATIONS[N - 1]; the database records each number once it is applied.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    name: str
    statements: tuple[str, ...]


MIGRATIONS: list[Migration] = [
    Migration(
        name="initial schema",
        statements=(
            """CREATE TABLE users (
                id TEXT PRIMARY KEY,
                identifier TEXT NOT NULL UNIQUE,
                password_hash TEXT,
                metadata TEXT NOT NULL DEFAULT '{}',
                created_at TEXT NOT NULL
            )""",
            # `seq` is a stable integer key (VACUUM may renumber a plain rowid); the search
            # index refers to rows by it.
            """CREATE TABLE threads (
                seq INTEGER PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                user_id TEXT REFERENCES users(id) ON DELETE CASCADE,
                name TEXT,
                metadata TEXT NOT NULL DEFAULT '{}',
                tags TEXT NOT NULL DEFAULT '[]',
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL
            )""",
            # The thread list: one user's threads, newest activity first, keyset-paged.
            "CREATE INDEX threads_by_user_activity ON threads (user_id, updated_at DESC, id DESC)",
            """CREATE TABLE steps (
                seq INTEGER PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                thread_id TEXT NOT NULL REFERENCES threads(id) ON DELETE CASCADE,
                parent_id TEXT,
                type TEXT NOT NULL,
                name TEXT,
                input TEXT,
                output TEXT,
                is_error INTEGER,
                metadata TEXT NOT NULL DEFAULT '{}',
                extra TEXT NOT NULL DEFAULT '{}',
                created_at TEXT,
                start_time TEXT,
                end_time TEXT
            )""",
            "CREATE INDEX steps_by_thread ON steps (thread_id, created_at, seq)",
            """CREATE TABLE feedbacks (
                id TEXT PRIMARY KEY,
                step_id TEXT NOT NULL REFERENCES steps(id) ON DELETE CASCADE,
                value INTEGER NOT NULL CHECK (value IN (0, 1)),
                comment TEXT
            )""",
            "CREATE INDEX feedbacks_by_step ON feedbacks (step_id)",
            """CREATE TABLE elements (
                id TEXT PRIMARY KEY,
                thread_id TEXT REFERENCES threads(id) ON DELETE CASCADE,
                step_id TEXT,
                type TEXT NOT NULL,
                name TEXT NOT NULL,
                mime TEXT,
                url TEXT,
                object_key TEXT,
                chainlit_key TEXT,
                display TEXT,
                size TEXT,
                language TEXT,
                page INTEGER,
                props TEXT NOT NULL DEFAULT '{}'
            )""",
            "CREATE INDEX elements_by_thread ON elements (thread_id)",
            "CREATE INDEX elements_by_step ON elements (step_id)",
            # Full-text search over thread names and messages, keyed by thread and step
            # (see chatllm.store.search for the rowid scheme). `body` holds the text with
            # CJK characters spaced out, so Chinese words of any length can be found.
            "CREATE VIRTUAL TABLE search USING fts5 ("
            " body, tokenize = 'unicode61 remove_diacritics 2')",
        ),
    ),
    Migration(
        name="sampling presets per user",
        statements=(
            """CREATE TABLE presets (
                user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                name TEXT NOT NULL,
                preset_values TEXT NOT NULL,
                created_at TEXT NOT NULL,
                PRIMARY KEY (user_id, name)
            )""",
        ),
    ),
    Migration(
        name="sessions that end: on logout, password reset and removal",
        statements=(
            # Tokens issued (iat) before this time (epoch milliseconds) are not accepted.
            "ALTER TABLE users ADD COLUMN sessions_valid_after INTEGER NOT NULL DEFAULT 0",
            # Logins logged out before their token expired, kept until it would have.
            """CREATE TABLE ended_sessions (
                login TEXT PRIMARY KEY,
                expires_at INTEGER NOT NULL
            )""",
        ),
    ),
]
