"""Speed of the app's data layer on SQLite and PostgreSQL beside Chainlit's SQLAlchemyDataLayer,
by thread count.

For each N in --sizes (default 1,000, 10,000, 100,000 and 1,000,000) it seeds a database with
N threads, all owned by one user, plus one 200-step thread. A thread has M messages: --messages,
by default 20 and, from 1,000,000 threads up, 4 (the rule is "20,1000000=4"; 20 M steps would
take a two-core machine some half an hour a dialect to generate and load, and 15-20 GB each).
Messages alternate user_message / assistant_message steps of short English sentences from a
few hundred words drawn with a seeded random; every tenth thread is mostly Chinese. Thread names
are the first user message. The figures at 1,000,000 threads are therefore for 4 M steps and
5 M search rows (one a message, one a name); the searched words are in 1 % of the threads at
any M, and the thread list does not depend on M.

The same rows go into both databases, with the columns the data layer fills (search rows,
`index_text` bodies, the conversation tree's placement: each message under the one before
it, the last the thread's active leaf; threads with branches are bench/tree.py's), after
`Database.migrate()` has made the schema:

  SQLite      a fresh file, filled by one `sqlite3` transaction of executemany calls
  PostgreSQL  a fresh database on a server of the bench's own (deploy.postgres.PostgresServer:
              PostgreSQL 15 under /tmp, fsync off), filled by asyncpg's COPY, one connection
              a table, while the tables' keys, foreign keys and indexes are dropped; they are
              made again from their own definitions (so exactly the migrations'), then VACUUM
              ANALYZE leaves the tables as autovacuum leaves a settled database. The seeding
              session alone sets maintenance_work_mem = 1 GB (index builds).

Seeding time is printed but is not the figure of interest. Then a fresh process (so that its
peak memory is its own) opens a fresh `ChatDataLayer` on the database and times, through the
real async API:

  page 1    list_threads(Pagination(first=20), ThreadFilter(userId=...))
  page 2    the same with the endCursor page 1 returned
  mid page  the same with a cursor half-way down the list (the endCursor after N/2 threads,
            paged through beforehand in the parent process)
  open 200  get_thread() on the 200-step thread
  search    ThreadFilter(userId=..., search=...) for an English word found in 1 % of threads
            ("lighthouse") and a Chinese word found in 1 % ("灯塔"); for information only,
            also a common word ("water": about a third of the threads at 20 messages), one found
            in none ("zebra"), two words ("lighthouse water") and a single letter ("t", as a
            search box sends after one keystroke)

Each is run once or more as a warm-up, then repeated up to --repeat times (default 30, at least
5, stopping early once --budget seconds are spent); the table shows the median and p90 in ms,
SQLite's columns and PostgreSQL's side by side. Memory is the process's peak RSS (VmHWM) once
the calls the targets are about have been timed (the information-only searches run after them,
and get their own peak) and the peak of Python allocations (tracemalloc) over one more pass of
those calls; both should stay flat as N grows. The SQL the data layer issued is captured and,
for the largest N, SQLite's EXPLAIN QUERY PLAN and PostgreSQL's EXPLAIN (ANALYZE, BUFFERS)
printed; the latter as EXECUTE of the prepared statement the data layer's own connection
keeps for that SQL (asyncpg prepares each statement once a connection; the searches share
one), so the plan is the one the timed calls ran: PostgreSQL plans a prepared statement's
first five runs for their values, then may keep a generic plan. PostgreSQL's figures are
taken with its defaults (shared_buffers 128 MB, work_mem 4 MB, plan_cache_mode auto, ...)
beside PostgresServer's own settings (fsync, synchronous_commit and full_page_writes off,
300 connections), which no read depends on.

For reference, at --ref-sizes (default 100 and 1,000) the same data goes into a SQLite file
with the schema of Chainlit's SQLAlchemy data layer documentation (PostgreSQL types mapped to
SQLite; no indexes beyond the keys, as documented) and `SQLAlchemyDataLayer` is timed on page
1, page 2, opening the 200-step thread and both searches. The table ends with Chainlit's time
over the app's at N = 1,000 and PASS/MISS against the targets, on each dialect: page 1 <= 2 ms
and search <= 20 ms (medians) at the largest N (1,000,000 by default), opening a 200-step
thread <= 10 ms at every N, memory flat in N.

Run from the repository root with the project's venv (PostgreSQL 15's binaries installed, as
`make test` installs them; --no-postgres leaves its column out). On two cores, seeding
100,000 threads takes about two minutes a dialect (1.5 GB SQLite, 2.1 GB PostgreSQL) and
1,000,000 about six (3.7 and 4.8 GB); the whole default run about 25 minutes, 5 with
--reuse, which keeps seeded files, and the PostgreSQL server (in WORKDIR/postgres, which the
`postgres` user must be able to reach) with its databases, between runs:

    .venv/bin/python bench/threads.py [--sizes 1000,10000,100000,1000000]
        [--messages 20,1000000=4] [--ref-sizes 100,1000] [--no-reference] [--no-postgres]
        [--repeat 30] [--budget 20] [--workdir /tmp/bench-threads] [--reuse] [--json PATH]
"""

# ruff: noqa: E402  (Chainlit's app root must be set before chainlit is imported)

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("CHAINLIT_APP_ROOT", str(ROOT))  # else Chainlit writes a config in cwd
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # deploy.postgres

import argparse
import asyncio
import itertools
import json
import logging
import math
import random
import re
import resource
import sqlite3
import statistics
import subprocess
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from chainlit.data.base import BaseDataLayer
from chainlit.types import Pagination, ThreadFilter
from sqlalchemy import event
from sqlalchemy.engine import make_url

from chatllm.store.datalayer import MAX_PAGE, ChatDataLayer
from chatllm.store.db import Database
from chatllm.store.files import FileStore
from chatllm.store.search import index_text, message_rowid, name_rowid
from deploy.postgres import BIN as PG_BIN
from deploy.postgres import PostgresServer

DATA_VERSION = 2  # bump when the generated data changes, so --reuse re-seeds
SEED = 20240601
STEPS_PER_THREAD = 20
DEFAULT_MESSAGES = f"{STEPS_PER_THREAD},1000000=4"  # messages a thread, by N (see --messages)
BIG_THREAD_STEPS = 200
PAGE = 20
USER_IDENTIFIER = "alice"
USER_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "bench-threads/user"))
BIG_THREAD_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "bench-threads/big-thread"))
BASE_TIME = datetime(2023, 1, 1, tzinfo=UTC)
THREAD_SPACING = timedelta(minutes=10)

EN_WORD = "lighthouse"  # in one assistant message of threads i % 100 == 37 (1 %)
ZH_WORD = "灯塔"  # in one assistant message of threads i % 100 == 3 (1 %, all Chinese threads)
COMMON_WORD = "water"  # mid-frequency in the vocabulary: about a third of the threads
NONE_WORD = "zebra"  # in no thread: the search must look at every candidate to say so
PAIR_WORDS = f"{EN_WORD} {COMMON_WORD}"  # two terms: threads holding both (0.4 %)
LETTER = "t"  # what a search box sends after one keystroke: every word starting with t
# The searches run on the app's layer: key -> words; the first two are the targets' searches.
SEARCHES = {
    "en": EN_WORD,
    "zh": ZH_WORD,
    "common": COMMON_WORD,
    "none": NONE_WORD,
    "pair": PAIR_WORDS,
    "letter": LETTER,
}
INFO_SEARCHES = {
    "common": f"{COMMON_WORD!r} (common)",
    "none": f"{NONE_WORD!r} (no thread)",
    "pair": f"{PAIR_WORDS!r}",
    "letter": f"{LETTER!r} (1 letter)",
}

TARGET_PAGE_MS = 2.0
TARGET_SEARCH_MS = 20.0
TARGET_OPEN_MS = 10.0
TARGET_N = 1_000_000  # the size the page and search targets are for
TEAM_CHAINLIT_PAGE_MS = 1060.0  # measured by the team at 1,000 threads x 20 steps
TEAM_CHAINLIT_SEARCH_MS = 1230.0
TEAM_CHAINLIT_PG_PAGE_MS = (550.0, 590.0)  # the team: on PostgreSQL 15, 1,000 and 10,000 threads
MIN_REPEAT = 5
DIALECTS = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}

# Most frequent first: word k is drawn with weight 1 / (k + 2).
EN_WORDS = """
the to and a of i you it is in that for this be on with can have are not your we what my
do will if as but so at just it's an or me like would there about from they get all how
one more some which here when time make know think need use could also by should then
good was see want try these well new other any work way help first much very other now
out up because sure only them just thing people day back right data file code even still
look into over while same most after before let's again each where why many thanks set
model run check change list part going question answer fine system start using next maybe
write read better idea simple small large build step test value error point case number
keep give find show call great please open close line text word long short easy hard real
problem example version update note page group place water today week month year morning
evening night house garden kitchen street city river mountain forest ocean island bridge
train plane ticket travel hotel dinner lunch coffee tea bread cheese apple orange recipe
soup salad music guitar piano song movie book story poem letter email meeting project
report budget price market store order customer service account password server network
browser window screen keyboard mouse printer camera phone battery cable signal weather
rain snow wind cloud sunny storm summer winter spring autumn holiday birthday family friend
teacher student school class lesson homework exam course language english french spanish
grammar sentence paragraph chapter title author library museum painting picture photo color
green blue red yellow black white bright dark quiet loud warm cold fresh clean quick slow
careful happy tired busy ready early late together alone around between against during
without within across behind below above under
""".split()
EN_WORDS = list(dict.fromkeys(EN_WORDS))
EN_CUM = list(itertools.accumulate(1.0 / (k + 2) for k in range(len(EN_WORDS))))
ZH_WORDS = """
我们 你们 他们 今天 明天 昨天 现在 已经 可以 应该 需要 希望 觉得 知道 学习 工作 问题 方法
时间 地方 朋友 老师 学生 学校 公司 城市 国家 世界 生活 音乐 电影 书籍 文章 故事 天气 下雨
阳光 早上 晚上 周末 旅行 火车 飞机 酒店 晚饭 咖啡 茶叶 面包 水果 苹果 厨房 花园 河流 高山
森林 海洋 岛屿 桥梁 电脑 手机 网络 程序 代码 数据 文件 系统 模型 版本 错误 测试 结果 简单
复杂 重要 非常 一起 开始 结束 帮助 解释 回答 翻译 中文 英文 语言 句子 一个 这个 那个 什么
为什么 怎么 因为 所以 但是 如果 虽然 而且 或者 还有 比较 特别 真的 大家 自己
""".split()


def _check_vocabulary() -> None:
    assert not any(EN_WORD in w for w in EN_WORDS), "the English search word must be rare"
    assert all(w.isascii() for w in EN_WORDS)
    assert not any(c in w for w in ZH_WORDS for c in ZH_WORD), "the Chinese word must be rare"
    assert COMMON_WORD in EN_WORDS
    assert not any(w.startswith(COMMON_WORD) and w != COMMON_WORD for w in EN_WORDS)
    assert not any(w.startswith(NONE_WORD) for w in EN_WORDS)


_check_vocabulary()

# The columns the data layer writes (chatllm.store.datalayer), filled the same way.
APP_THREAD_METADATA = json.dumps(
    {"chat_profile": "Local", "client_type": "webapp", "languages": "en-US,en;q=0.9"}
)
APP_STEP_EXTRA = json.dumps({"streaming": False, "waitForAnswer": False})

# Chainlit's documented SQLAlchemy data layer schema, PostgreSQL types mapped to SQLite.
CHAINLIT_SCHEMA = (
    """CREATE TABLE users ("id" TEXT PRIMARY KEY, "identifier" TEXT NOT NULL UNIQUE,
        "metadata" TEXT NOT NULL, "createdAt" TEXT)""",
    """CREATE TABLE threads ("id" TEXT PRIMARY KEY, "createdAt" TEXT, "name" TEXT,
        "userId" TEXT, "userIdentifier" TEXT, "tags" TEXT, "metadata" TEXT,
        FOREIGN KEY ("userId") REFERENCES users("id") ON DELETE CASCADE)""",
    """CREATE TABLE steps ("id" TEXT PRIMARY KEY, "name" TEXT NOT NULL, "type" TEXT NOT NULL,
        "threadId" TEXT NOT NULL, "parentId" TEXT, "streaming" BOOLEAN NOT NULL,
        "waitForAnswer" BOOLEAN, "isError" BOOLEAN, "metadata" TEXT, "tags" TEXT,
        "input" TEXT, "output" TEXT, "createdAt" TEXT, "command" TEXT, "start" TEXT,
        "end" TEXT, "generation" TEXT, "showInput" TEXT, "language" TEXT, "indent" INT,
        "defaultOpen" BOOLEAN, "modes" TEXT,
        FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE)""",
    """CREATE TABLE elements ("id" TEXT PRIMARY KEY, "threadId" TEXT, "type" TEXT, "url" TEXT,
        "chainlitKey" TEXT, "name" TEXT NOT NULL, "display" TEXT, "objectKey" TEXT,
        "size" TEXT, "page" INT, "language" TEXT, "forId" TEXT, "mime" TEXT, "props" TEXT,
        "autoPlay" BOOLEAN, "playerConfig" TEXT,
        FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE)""",
    """CREATE TABLE feedbacks ("id" TEXT PRIMARY KEY, "forId" TEXT NOT NULL,
        "threadId" TEXT NOT NULL, "value" INT NOT NULL, "comment" TEXT,
        FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE)""",
)

# ---------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class Message:
    id: str
    type: str  # user_message | assistant_message
    author: str
    text: str
    created: str


@dataclass(frozen=True)
class ThreadData:
    index: int
    id: str
    name: str
    created: str
    updated: str
    messages: list[Message]


def stamp(moment: datetime) -> str:
    """The data layer's timestamp format (chatllm.store.datalayer.now)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _english(rng: random.Random, sentences: int) -> str:
    out: list[str] = []
    for _ in range(sentences):
        words = rng.choices(EN_WORDS, cum_weights=EN_CUM, k=rng.randint(5, 14))
        if len(words) > 7 and rng.random() < 0.3:
            words[rng.randrange(2, len(words) - 3)] += ","
        out.append(words[0].capitalize() + " " + " ".join(words[1:]) + rng.choice(".....?!"))
    return " ".join(out)


def _chinese(rng: random.Random, sentences: int) -> str:
    out: list[str] = []
    for _ in range(sentences):
        words = rng.choices(ZH_WORDS, k=rng.randint(4, 10))
        if len(words) > 6 and rng.random() < 0.4:
            words[rng.randrange(2, len(words) - 2)] += "，"
        out.append("".join(words) + rng.choice("。。。？！"))
    return "".join(out)


def _thread(rng: random.Random, index: int, start: datetime, steps: int) -> ThreadData:
    chinese = index % 10 == 3
    texts: list[str] = []
    for k in range(steps):
        count = rng.randint(1, 2) if k % 2 == 0 else rng.randint(2, 5)
        if chinese and rng.random() < 0.7:
            texts.append(_chinese(rng, count))
        else:
            texts.append(_english(rng, count))
    if index % 100 == 37:
        k = 2 * rng.randrange(steps // 2) + 1
        words = texts[k].split(" ")
        at = rng.randrange(1, len(words))
        words.insert(at, "the " + EN_WORD)
        texts[k] = " ".join(words)
    if index % 100 == 3:
        k = 2 * rng.randrange(steps // 2) + 1
        texts[k] += "那座" + ZH_WORD + "晚上非常明亮。"
    moments = [
        start + timedelta(seconds=7 * k, milliseconds=rng.randrange(1000)) for k in range(steps)
    ]
    messages = [
        Message(
            id=_uuid(rng),
            type="user_message" if k % 2 == 0 else "assistant_message",
            author=USER_IDENTIFIER if k % 2 == 0 else "Assistant",
            text=texts[k],
            created=stamp(moments[k]),
        )
        for k in range(steps)
    ]
    return ThreadData(
        index=index,
        id=BIG_THREAD_ID if index < 0 else _uuid(rng),
        name=texts[0][:255],
        created=messages[0].created,
        updated=messages[-1].created,
        messages=messages,
    )


def generate(n: int, messages: int = STEPS_PER_THREAD) -> Iterator[ThreadData]:
    """N threads of `messages` messages, oldest first (distinct, increasing last activity),
    then the 200-step thread, older than all of them."""
    rng = random.Random(SEED)
    for index in range(n):
        yield _thread(rng, index, BASE_TIME + index * THREAD_SPACING, messages)
    big = random.Random(SEED + 1)
    yield _thread(big, -1, BASE_TIME - timedelta(days=1), BIG_THREAD_STEPS)


def messages_for(n: int, rule: list[tuple[int, int]]) -> int:
    """Messages a thread at N threads: the count of the rule's largest threshold <= N."""
    return [count for start, count in rule if start <= n][-1]


_EN_MATCH = re.compile(rf"\b{EN_WORD}", re.I)
_COMMON_MATCH = re.compile(rf"\b{COMMON_WORD}", re.I)


def _matches(thread: ThreadData) -> tuple[bool, bool, bool]:
    """Whether the thread's messages hold each search word (as the searches find them)."""
    body = "\n".join(m.text for m in thread.messages)
    return bool(_EN_MATCH.search(body)), ZH_WORD in body, bool(_COMMON_MATCH.search(body))


@dataclass
class SeedInfo:
    path: str  # the SQLite file, or the PostgreSQL database's name
    n: int
    seconds: float
    size_mb: float
    threads: int
    steps: int
    hits: dict[str, int]
    reused: bool = False
    version: int = DATA_VERSION
    messages: int = STEPS_PER_THREAD
    dialect: str = "sqlite"


@dataclass
class _Tally:
    threads: int = 0
    steps: int = 0
    hits: dict[str, int] = field(default_factory=lambda: {"en": 0, "zh": 0, "common": 0})


@dataclass
class _Batch:
    threads: list[tuple[Any, ...]] = field(default_factory=list)
    steps: list[tuple[Any, ...]] = field(default_factory=list)
    search: list[tuple[Any, ...]] = field(default_factory=list)


# The app's tables as the seeding fills them, in the order of the batches' tuples.
APP_COLUMNS = {
    "threads": (
        "seq", "id", "user_id", "name", "metadata", "tags", "created_at", "updated_at",
        "active_leaf_id",
    ),
    "steps": (
        "seq", "id", "thread_id", "parent_id", "type", "name", "input", "output", "is_error",
        "metadata", "extra", "created_at", "start_time", "end_time", "tree_parent_id",
        "tree_depth",
    ),
    "search": ("rowid", "body"),
}  # fmt: skip


def app_batches(n: int, messages: int, tally: _Tally) -> Iterator[_Batch]:
    """The app's rows for N threads, 2,000 threads a batch; `tally` counts them."""
    step_seq = 0
    data = generate(n, messages)
    while chunk := list(itertools.islice(data, 2000)):
        batch = _Batch()
        for thread in chunk:
            tally.threads += 1
            thread_seq = tally.threads
            batch.threads.append(
                (thread_seq, thread.id, USER_ID, thread.name, APP_THREAD_METADATA, "[]",
                 thread.created, thread.updated, thread.messages[-1].id)
            )  # fmt: skip
            batch.search.append((name_rowid(thread_seq), index_text(thread.name)))
            # Each thread a conversation tree of one branch, as the app places its
            # messages (and migration 7 placed older ones): each under the one before.
            parent: str | None = None
            for depth, m in enumerate(thread.messages):
                step_seq += 1
                batch.steps.append(
                    (step_seq, m.id, thread.id, None, m.type, m.author, None, m.text, 0, "{}",
                     APP_STEP_EXTRA, m.created, m.created, m.created, parent, depth)
                )  # fmt: skip
                parent = m.id
                batch.search.append((message_rowid(thread_seq, step_seq), index_text(m.text)))
            tally.steps += len(thread.messages)
            if thread.index >= 0:
                for key, hit in zip(("en", "zh", "common"), _matches(thread), strict=True):
                    tally.hits[key] += hit
        yield batch


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _sidecar(path: Path) -> Path:
    return Path(str(path) + ".json")


def _reusable(path: Path, n: int, messages: int, exists: bool | None = None) -> SeedInfo | None:
    """The seed recorded beside `path`, if it seeded these data and the database `exists`
    (by default: if there is a file at `path`)."""
    sidecar = _sidecar(path)
    if not (sidecar.exists() and (path.exists() if exists is None else exists)):
        return None
    try:
        info = SeedInfo(**json.loads(sidecar.read_text()))
    except (TypeError, ValueError):
        return None
    if info.n != n or info.version != DATA_VERSION or info.messages != messages:
        return None
    info.reused = True
    return info


def _bulk_connection(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=OFF")  # a fresh file: nothing to roll back to
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-512000")  # 500 MB: random uuid keys in big indexes
    return con


def _insert(table: str) -> str:
    columns = APP_COLUMNS[table]
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"


def seed_app(path: Path, n: int, messages: int) -> SeedInfo:
    """The app's SQLite database: schema by its migrations, rows by bulk SQL."""
    _remove_db(path)
    _sidecar(path).unlink(missing_ok=True)
    started = time.perf_counter()

    async def migrate() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        try:
            await db.migrate()
        finally:
            await db.close()

    asyncio.run(migrate())
    con = _bulk_connection(path)
    tally = _Tally()
    con.execute("BEGIN")
    con.execute(
        "INSERT INTO users (id, identifier, password_hash, metadata, created_at)"
        " VALUES (?, ?, NULL, '{}', ?)",
        (USER_ID, USER_IDENTIFIER, stamp(BASE_TIME - timedelta(days=30))),
    )
    for batch in app_batches(n, messages, tally):
        con.executemany(_insert("threads"), batch.threads)
        con.executemany(_insert("steps"), batch.steps)
        con.executemany(_insert("search"), batch.search)
    con.execute("COMMIT")
    con.execute("PRAGMA journal_mode=WAL")  # as the app leaves it
    con.close()
    return _seeded(path, str(path), n, started, path.stat().st_size / 2**20, tally, messages)


def seed_chainlit(path: Path, n: int, messages: int) -> SeedInfo:
    """The same threads in the schema of Chainlit's SQLAlchemy data layer."""
    _remove_db(path)
    _sidecar(path).unlink(missing_ok=True)
    started = time.perf_counter()
    con = _bulk_connection(path)
    for statement in CHAINLIT_SCHEMA:
        con.execute(statement)
    tally = _Tally()
    con.execute("BEGIN")
    con.execute(
        'INSERT INTO users ("id", "identifier", "metadata", "createdAt") VALUES (?, ?, ?, ?)',
        (USER_ID, USER_IDENTIFIER, "{}", stamp(BASE_TIME - timedelta(days=30))),
    )
    data = generate(n, messages)
    while batch := list(itertools.islice(data, 2000)):
        thread_rows: list[tuple[Any, ...]] = []
        step_rows: list[tuple[Any, ...]] = []
        for thread in batch:
            tally.threads += 1
            thread_rows.append(
                (thread.id, thread.created, thread.name, USER_ID, USER_IDENTIFIER, None,
                 APP_THREAD_METADATA)
            )  # fmt: skip
            for m in thread.messages:
                step_rows.append(
                    (m.id, m.author, m.type, thread.id, None, False, False, False, "{}", None,
                     None, m.text, m.created, None, m.created, m.created, "{}", None, None)
                )  # fmt: skip
            tally.steps += len(thread.messages)
            if thread.index >= 0:
                for key, hit in zip(("en", "zh", "common"), _matches(thread), strict=True):
                    tally.hits[key] += hit
        con.executemany(
            'INSERT INTO threads ("id", "createdAt", "name", "userId", "userIdentifier",'
            ' "tags", "metadata") VALUES (?, ?, ?, ?, ?, ?, ?)',
            thread_rows,
        )
        con.executemany(
            'INSERT INTO steps ("id", "name", "type", "threadId", "parentId", "streaming",'
            ' "waitForAnswer", "isError", "metadata", "tags", "input", "output", "createdAt",'
            ' "command", "start", "end", "generation", "showInput", "language")'
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            step_rows,
        )
    con.execute("COMMIT")
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    return _seeded(path, str(path), n, started, path.stat().st_size / 2**20, tally, messages)


def _seeded(
    record: Path,
    where: str,
    n: int,
    started: float,
    size_mb: float,
    tally: _Tally,
    messages: int,
    dialect: str = "sqlite",
) -> SeedInfo:
    """What a seeding made (`where`: the file, or the database's name), recorded beside
    `record` for --reuse."""
    info = SeedInfo(
        path=where,
        n=n,
        seconds=time.perf_counter() - started,
        size_mb=size_mb,
        threads=tally.threads,
        steps=tally.steps,
        hits=tally.hits,
        messages=messages,
        dialect=dialect,
    )
    return _recorded(record, info)


def _recorded(path: Path, info: SeedInfo) -> SeedInfo:
    _sidecar(path).write_text(json.dumps(asdict(info)))
    return info


# ---------------------------------------------------------------------------- PostgreSQL

#: The tables the seeding fills; their keys, foreign keys (and those pointing at them) and
#: indexes are dropped for the load and made again from their own definitions.
PG_TABLES = ("threads", "steps", "search")
#: The seeding session's own settings: index builds and the foreign keys' checks in memory.
PG_SEED_SETTINGS = {"maintenance_work_mem": "1GB", "work_mem": "256MB"}


def start_postgres(workdir: Path, reuse: bool) -> PostgresServer:
    """A temporary server (fsync off), or with --reuse one whose data stay in WORKDIR/postgres
    (set to the same speed settings, in its postgresql.auto.conf)."""
    if not reuse:
        return PostgresServer().start()
    server = PostgresServer(root=workdir / "postgres").start()
    for setting in ("fsync", "synchronous_commit", "full_page_writes"):
        server.psql(f"ALTER SYSTEM SET {setting} = off")
    server.psql("SELECT pg_reload_conf()")
    return server


def pg_settings(server: PostgresServer) -> dict[str, str]:
    """The server's settings that initdb's configuration file or PostgresServer's command line
    give (what the figures ran with; locale and formats left out)."""
    rows = server.psql(
        "SELECT name || '=' || current_setting(name) FROM pg_settings"
        " WHERE source IN ('configuration file', 'command line')"
        " AND name NOT LIKE 'lc\\_%' AND name NOT IN ('DateStyle', 'TimeZone', 'log_timezone',"
        " 'default_text_search_config', 'port', 'listen_addresses',"
        " 'unix_socket_directories') ORDER BY name"
    )
    return dict(line.split("=", 1) for line in rows.splitlines() if "=" in line)


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def seed_postgres(server: PostgresServer, workdir: Path, n: int, messages: int) -> SeedInfo:
    """The app's PostgreSQL database: schema by its migrations, rows by COPY."""
    name = f"bench_app_{n}"
    marker = workdir / f"postgres-{name}"
    _sidecar(marker).unlink(missing_ok=True)
    started = time.perf_counter()
    server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    url = server.new_database(name)
    tally = _Tally()
    asyncio.run(_seed_postgres(url, n, messages, tally))
    size = server.psql(f"SELECT pg_database_size('{name}')").strip()
    return _seeded(marker, name, n, started, int(size) / 2**20, tally, messages, "postgresql")


def reusable_postgres(
    server: PostgresServer, workdir: Path, n: int, messages: int
) -> SeedInfo | None:
    name = f"bench_app_{n}"
    there = bool(server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip())
    return _reusable(workdir / f"postgres-{name}", n, messages, exists=there)


async def _seed_postgres(url: str, n: int, messages: int, tally: _Tally) -> None:
    db = Database(url)
    try:
        await db.migrate()
    finally:
        await db.close()
    dsn = _asyncpg_dsn(url)
    con = await asyncpg.connect(dsn, server_settings=PG_SEED_SETTINGS)
    try:
        await con.execute(
            "INSERT INTO users (id, identifier, password_hash, metadata, created_at)"
            " VALUES ($1, $2, NULL, '{}', $3)",
            USER_ID,
            USER_IDENTIFIER,
            stamp(BASE_TIME - timedelta(days=30)),
        )
        keys, indexes = await _pg_keys(con)
        for table, key, _definition, _kind in sorted(keys, key=lambda k: k[3] != "f"):
            await con.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{key}"')  # FKs first
        for index, _definition, _table in indexes:
            await con.execute(f'DROP INDEX "{index}"')
        await _copy(dsn, app_batches(n, messages, tally))
        for table in ("threads", "steps"):  # the app's own inserts number on from here
            await con.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'seq'),"
                f" (SELECT max(seq) FROM {table}))"
            )

        async def rebuild(table: str) -> None:
            """This table's keys and indexes as they were, then VACUUM ANALYZE."""
            own = await asyncpg.connect(dsn, server_settings=PG_SEED_SETTINGS)
            try:
                for owner, key, definition, kind in keys:
                    if owner == table and kind != "f":
                        await own.execute(
                            f'ALTER TABLE {owner} ADD CONSTRAINT "{key}" {definition}'
                        )
                for _index, definition, owner in indexes:
                    if owner == table:
                        await own.execute(definition)
                await own.execute(f"VACUUM (ANALYZE) {table}")
            finally:
                await own.close()

        async with asyncio.TaskGroup() as group:  # three tables, built side by side
            for table in PG_TABLES:
                group.create_task(rebuild(table))
        for owner, key, definition, kind in keys:
            if kind == "f":
                await con.execute(f'ALTER TABLE {owner} ADD CONSTRAINT "{key}" {definition}')
        await con.execute("ANALYZE")
    finally:
        await con.close()


async def _pg_keys(
    con: asyncpg.Connection,
) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str, str]]]:
    """(table, name, definition, kind) of the keys and foreign keys on the seeded tables or
    pointing at them; (name, definition, table) of their other indexes."""
    tables = list(PG_TABLES)
    keys = await con.fetch(
        "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid), c.contype::text"
        " FROM pg_constraint c WHERE c.contype IN ('p', 'u', 'f')"
        " AND (c.conrelid = ANY($1::text[]::regclass[])"
        " OR c.confrelid = ANY($1::text[]::regclass[])) ORDER BY c.oid",
        tables,
    )
    indexes = await con.fetch(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid),"
        " i.indrelid::regclass::text FROM pg_index i"
        " WHERE i.indrelid = ANY($1::text[]::regclass[]) AND NOT EXISTS (SELECT 1"
        " FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid"
        " AND c.contype IN ('p', 'u')) ORDER BY i.indexrelid",
        tables,
    )
    return [(r[0], r[1], r[2], str(r[3])) for r in keys], [(r[0], r[1], r[2]) for r in indexes]


async def _copy(dsn: str, batches: Iterator[_Batch]) -> None:
    """COPY the batches into their tables, one connection a table: the server parses and
    stores one batch while the next is generated here."""
    queues: dict[str, asyncio.Queue[list[tuple[Any, ...]] | None]] = {
        table: asyncio.Queue(maxsize=4) for table in PG_TABLES
    }

    async def records(table: str) -> AsyncIterator[tuple[Any, ...]]:
        while (rows := await queues[table].get()) is not None:
            for row in rows:
                yield row

    async def copy(table: str) -> None:
        con = await asyncpg.connect(dsn)
        try:
            await con.copy_records_to_table(
                table, records=records(table), columns=list(APP_COLUMNS[table])
            )
        finally:
            await con.close()

    async with asyncio.TaskGroup() as group:
        for table in PG_TABLES:
            group.create_task(copy(table))
        for batch in batches:
            for table in PG_TABLES:
                await queues[table].put(getattr(batch, table))
            await asyncio.sleep(0)  # let the COPYs send what is queued
        for table in PG_TABLES:
            await queues[table].put(None)


# ---------------------------------------------------------------------------- measuring


@dataclass
class Timing:
    median: float
    p90: float
    count: int

    @classmethod
    def of(cls, samples_ms: list[float]) -> Timing:
        ordered = sorted(samples_ms)
        p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
        return cls(statistics.median(ordered), p90, len(ordered))


@dataclass
class Measured:
    kind: str  # app | chainlit
    n: int
    timings: dict[str, Timing] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # rows each call returned
    ids: dict[str, list[str]] = field(default_factory=dict)
    base_rss_mb: float = 0.0
    peak_rss_mb: float = 0.0  # after the calls the targets are about
    py_peak_mb: float = 0.0
    peak_rss_all_mb: float = 0.0  # after the other searches too
    py_peak_all_mb: float = 0.0
    plans: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dialect: str = "sqlite"


def _proc_status_mb(key: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    # Not Linux: the process-wide peak is the best there is.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _timed(call: Callable[[], Awaitable[object]], repeat: int, budget: float) -> Timing:
    first = time.perf_counter()
    await call()
    if time.perf_counter() - first < 0.1:
        for _ in range(2):
            await call()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < repeat:
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1000)
        if len(samples) >= MIN_REPEAT and time.perf_counter() - started > budget:
            break
    return Timing.of(samples)


def _filter(search: str | None = None) -> ThreadFilter:
    return ThreadFilter(userId=USER_ID, search=search)


async def measure(spec: dict[str, Any]) -> Measured:
    """Run in a child process: time one data layer on one seeded database."""
    kind: str = spec["kind"]
    dialect: str = spec["dialect"]
    url: str = spec["url"]
    layer: BaseDataLayer
    db: Database | None = None
    if kind == "app":
        db = Database(url)
        layer = ChatDataLayer(db, FileStore(Path(spec["files"])))
    else:
        from chainlit.data.sql_alchemy import SQLAlchemyDataLayer

        chainlit_log = logging.getLogger("chainlit")
        level = chainlit_log.level
        chainlit_log.setLevel(logging.ERROR)  # "storage client is not initialized"
        layer = SQLAlchemyDataLayer(conninfo=url)
        chainlit_log.setLevel(level)
    result = Measured(kind=kind, n=spec["n"], base_rss_mb=_proc_status_mb("VmRSS"), dialect=dialect)
    words: dict[str, str] = spec["words"]

    first = await layer.list_threads(Pagination(first=PAGE), _filter())
    page2_cursor = first.pageInfo.endCursor
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "page1": lambda: layer.list_threads(Pagination(first=PAGE), _filter()),
        "page2": lambda: layer.list_threads(Pagination(first=PAGE, cursor=page2_cursor), _filter()),
    }
    if spec.get("mid_cursor"):
        mid = Pagination(first=PAGE, cursor=spec["mid_cursor"])
        calls["page_mid"] = lambda: layer.list_threads(mid, _filter())
    calls["open200"] = lambda: layer.get_thread(BIG_THREAD_ID)
    for key in ("en", "zh"):
        calls[f"search_{key}"] = _search_call(layer, words[key])
    info: dict[str, Callable[[], Awaitable[Any]]] = {}
    if kind == "app":
        info = {f"search_{key}": _search_call(layer, words[key]) for key in INFO_SEARCHES}

    # The calls the targets are about first: the peak memory so far is theirs.
    for group in (calls, info):
        for name, call in group.items():
            answer = await call()
            if name == "open200":
                result.counts[name] = len(answer["steps"]) if answer else 0
            else:
                result.counts[name] = len(answer.data)
                result.ids[name] = [thread["id"] for thread in answer.data]
            result.timings[name] = await _timed(call, spec["repeat"], spec["budget"])
        if group is calls:
            result.peak_rss_mb = _proc_status_mb("VmHWM")
    result.peak_rss_all_mb = _proc_status_mb("VmHWM")

    for group in (calls, info):
        tracemalloc.start()
        for call in group.values():
            await call()
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        if group is calls:
            result.py_peak_mb = peak
        result.py_peak_all_mb = max(result.py_peak_all_mb, peak)

    calls.update(info)
    if db is not None and spec.get("explain"):
        if dialect == "postgresql":
            result.plans = await _plans_postgresql(db, url, calls)
        else:
            result.plans = await _plans_sqlite(db, Path(spec["db"]), calls)
    await layer.close()
    return result


def _search_call(layer: BaseDataLayer, word: str) -> Callable[[], Awaitable[Any]]:
    return lambda: layer.list_threads(Pagination(first=PAGE), _filter(word))


@contextmanager
def _capturing(db: Database) -> Iterator[list[tuple[str, Any]]]:
    """The SELECTs the data layer sends while the block runs, with their parameters."""
    issued: list[tuple[str, Any]] = []

    def capture(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            issued.append((statement, parameters))

    event.listen(db.reader.sync_engine, "before_cursor_execute", capture)
    try:
        yield issued
    finally:
        event.remove(db.reader.sync_engine, "before_cursor_execute", capture)


async def _plans_sqlite(
    db: Database, path: Path, calls: dict[str, Callable[[], Awaitable[Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """The SELECTs each call issues, with SQLite's EXPLAIN QUERY PLAN for each."""
    plans: dict[str, list[dict[str, Any]]] = {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        with _capturing(db) as issued:
            for name, call in calls.items():
                issued.clear()
                await call()
                plans[name] = []
                for statement, parameters in issued:
                    rows = con.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
                    plans[name].append({"sql": statement, "plan": _plan_tree(rows)})
    finally:
        con.close()
    return plans


def _plan_tree(rows: list[tuple[int, int, int, str]]) -> list[str]:
    depth: dict[int, int] = {0: -1}
    lines: list[str] = []
    for node, parent, _unused, detail in rows:
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node] + detail)
    return lines


#: Without the data layer's own prepared statement, a plan is shown after a statement of its
#: own has run this often: PostgreSQL plans a prepared statement's first five runs for their
#: values, then may keep a generic plan.
PG_PLAN_RUNS = 6


async def _plans_postgresql(
    db: Database, url: str, calls: dict[str, Callable[[], Awaitable[Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """The SELECTs each call issues, with PostgreSQL's EXPLAIN (ANALYZE, BUFFERS) of each: run
    as EXECUTE of the prepared statement the data layer's connection keeps for that SQL (asyncpg
    prepares each statement once a connection), so the plan is the one the timed calls ran,
    generic or custom as their history made it."""
    issued_by: dict[str, list[tuple[str, Any]]] = {}
    with _capturing(db) as issued:
        for name, call in calls.items():
            issued.clear()
            await call()
            issued_by[name] = list(issued)
    plans: dict[str, list[dict[str, Any]]] = {}
    # Calls one at a time use one pooled connection: the one that holds the statements.
    async with db.reader.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        for name, statements in issued_by.items():
            plans[name] = []
            for statement, parameters in statements:
                values = ", ".join(_pg_literal(value) for value in parameters or ())
                kept = await raw.fetchrow(
                    "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements"
                    " WHERE statement = $1 AND from_sql = false",
                    statement,
                )
                if kept is not None:
                    execute = f'EXECUTE "{kept[0]}"' + (f"({values})" if values else "")
                    note = (
                        f"the data layer's prepared statement, run so far with"
                        f" {kept[1]} generic and {kept[2]} custom plans"
                    )
                else:
                    await raw.execute(f"PREPARE bench_plan AS {statement}")
                    execute = "EXECUTE bench_plan" + (f"({values})" if values else "")
                    for _ in range(PG_PLAN_RUNS):
                        await raw.execute(execute)
                    note = f"a statement of the bench's own, after {PG_PLAN_RUNS} runs"
                try:
                    rows = await raw.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {execute}")
                finally:
                    if kept is None:
                        await raw.execute("DEALLOCATE bench_plan")
                plans[name].append(
                    {"sql": statement, "plan": [f"({note})", *(row[0] for row in rows)]}
                )
    return plans


def _pg_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    result = asyncio.run(measure(spec))
    Path(spec["out"]).write_text(json.dumps(asdict(result)))


def run_child(spec: dict[str, Any]) -> Measured:
    """Measure in a fresh interpreter: its peak memory is the query phase's alone."""
    out = Path(spec["out"])
    out.unlink(missing_ok=True)
    subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        check=True,
        cwd=ROOT,
    )
    raw = json.loads(out.read_text())
    out.unlink()
    raw["timings"] = {k: Timing(**v) for k, v in raw["timings"].items()}
    return Measured(**raw)


async def _mid_cursor(url: str, n: int, files: Path) -> str | None:
    """The endCursor after the newer half of the list (paged through, MAX_PAGE at a time,
    the most a page holds): a cursor half-way down."""
    layer = ChatDataLayer(Database(url), FileStore(files))
    cursor: str | None = None
    try:
        remaining = max(PAGE, n // 2)
        while remaining > 0:
            page = await layer.list_threads(
                Pagination(first=min(MAX_PAGE, remaining), cursor=cursor), _filter()
            )
            cursor = page.pageInfo.endCursor
            remaining -= len(page.data)
            if not page.pageInfo.hasNextPage:
                break
        return cursor
    finally:
        await layer.close()


# ---------------------------------------------------------------------------- report

Row = tuple[SeedInfo, Measured]


def _ms(timing: Timing | None, p90: bool = True) -> str:
    if timing is None:
        return "-"

    def fmt(v: float) -> str:
        return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"

    return f"{fmt(timing.median)}/{fmt(timing.p90)}" if p90 else fmt(timing.median)


_SIDE_HEAD = (
    f"{'seed s':>6} {'db MB':>6} {'page 1':>11} {'page 2':>6} {'mid pg':>6} {'open 200':>11}"
    f" {'search en':>11} {'search zh':>11} {'RSS':>4} {'py MB':>5}"
)


def _side(row: Row | None) -> str:
    if row is None:
        return f"{'-':^{len(_SIDE_HEAD)}}"
    seed, m = row
    t = m.timings
    return (
        f"{seed.seconds:>6.1f} {seed.size_mb:>6.0f} {_ms(t.get('page1')):>11}"
        f" {_ms(t.get('page2'), False):>6} {_ms(t.get('page_mid'), False):>6}"
        f" {_ms(t.get('open200')):>11} {_ms(t.get('search_en')):>11}"
        f" {_ms(t.get('search_zh')):>11} {m.peak_rss_mb:>4.0f} {m.py_peak_mb:>5.2f}"
    )


def print_table(rows: list[Row], versions: dict[str, str]) -> None:
    """One line per N and layer: SQLite's figures, then PostgreSQL's."""
    lines: dict[tuple[int, str], dict[str, Row]] = {}
    for seed, m in rows:
        lines.setdefault((m.n, m.kind), {})[m.dialect] = (seed, m)
    dialects = [d for d in DIALECTS if any(m.dialect == d for _s, m in rows)]
    lead = f"{'N':>9} {'layer':<8} {'msgs':>4}"
    titles = "".join(f" | {DIALECTS[d] + ' ' + versions[d]:^{len(_SIDE_HEAD)}}" for d in dialects)
    print(" " * len(lead) + titles)
    head = lead + "".join(f" | {_SIDE_HEAD}" for _d in dialects)
    print(head)
    print("-" * len(head))
    for (n, kind), by_dialect in sorted(lines.items()):
        messages = next(iter(by_dialect.values()))[0].messages
        cells = "".join(f" | {_side(by_dialect.get(d))}" for d in dialects)
        print(f"{n:>9,} {kind:<8} {messages:>4}{cells}")
    print(
        "times in ms, median/p90 (single figures: median); msgs = messages a thread; page 2"
        " via page 1's endCursor, mid pg half-way down the list; search en / zh: a word in 1 %"
        " of the threads; RSS = peak resident memory (MB) of the measuring process after these"
        " calls; py = peak Python allocations over one more pass of them"
    )
    info = [(seed, m) for seed, m in rows if m.kind == "app"]
    if not info:
        return
    print("\nOther searches on the app's layer, for information (ms, median/p90):")
    head = (
        f"{'N':>9} {'dialect':<10}"
        + "".join(f" {label:>26}" for label in INFO_SEARCHES.values())
        + f" {'RSS MB':>7} {'py MB':>6}"
    )
    print(head)
    print("-" * len(head))
    for _seed, m in sorted(info, key=lambda row: (row[1].n, list(DIALECTS).index(row[1].dialect))):
        cells = "".join(f" {_ms(m.timings.get('search_' + k)):>26}" for k in INFO_SEARCHES)
        print(
            f"{m.n:>9,} {DIALECTS[m.dialect]:<10}{cells}"
            f" {m.peak_rss_all_mb:>7.0f} {m.py_peak_all_mb:>6.2f}"
        )
    print("RSS / py here: the same peaks once these searches have run too")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def summarise(app: list[Row], ref: list[Row]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "ratios": {},
        "targets": {},
        "same_results": {},
        "postgresql_same_results": {},
    }
    seen: set[int] = set()
    for seed, _m in sorted(app, key=lambda row: row[0].n):
        if seed.n in seen:
            continue
        seen.add(seed.n)
        share = {k: f"{v:,} ({100 * v / seed.n:.1f} %)" for k, v in seed.hits.items()}
        print(
            f"N={seed.n:,}: {seed.threads:,} threads, {seed.steps:,} steps ({seed.messages}"
            f" messages a thread); threads matching {EN_WORD!r}: {share['en']}, {ZH_WORD!r}:"
            f" {share['zh']}, {COMMON_WORD!r}: {share['common']}"
        )
    sqlite_app = [(s, m) for s, m in app if m.dialect == "sqlite"]
    pg_app = [(s, m) for s, m in app if m.dialect == "postgresql"]
    app_1000 = next((m for s, m in sqlite_app if s.n == 1000), None)
    ref_1000 = next((m for s, m in ref if s.n == 1000), None)
    if app_1000 and ref_1000:
        print("\nChainlit SQLAlchemyDataLayer / app at N=1,000, on SQLite (median over median):")
        parts = []
        for key, label in (
            ("page1", "page 1"),
            ("page2", "page 2"),
            ("open200", "open 200"),
            ("search_en", "search en"),
            ("search_zh", "search zh"),
        ):
            ratio = ref_1000.timings[key].median / app_1000.timings[key].median
            summary["ratios"][key] = ratio
            parts.append(f"{label} x{ratio:,.0f}")
        print("  " + ", ".join(parts))
        print(
            f"  Chainlit page 1 here {ref_1000.timings['page1'].median:,.0f} ms (team:"
            f" ~{TEAM_CHAINLIT_PAGE_MS:,.0f} ms), search"
            f" {ref_1000.timings['search_en'].median:,.0f} ms"
            f" (team: ~{TEAM_CHAINLIT_SEARCH_MS:,.0f} ms)"
        )
        same = {
            key: app_1000.ids.get(key) == ref_1000.ids.get(key)
            for key in ("page1", "page2", "search_en", "search_zh")
        }
        summary["same_results"] = same
        print(
            "  same threads returned as Chainlit: "
            + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items())
        )
    pg_1000 = next((m for s, m in pg_app if s.n == 1000), None)
    if pg_1000:
        low, high = TEAM_CHAINLIT_PG_PAGE_MS
        page = pg_1000.timings["page1"].median
        print(
            f"  on PostgreSQL 15 (the team's figures for Chainlit's layer: {low:.0f}-{high:.0f} ms"
            f" page 1 at 1,000 and 10,000 threads): app page 1 {page:.2f} ms,"
            f" x{low / page:,.0f}-{high / page:,.0f}"
        )
    if sqlite_app and pg_app:
        print("\nPostgreSQL returned the same threads as SQLite:")
        by_n = {s.n: m for s, m in sqlite_app}
        for seed, pg in sorted(pg_app, key=lambda row: row[0].n):
            lite = by_n.get(seed.n)
            if lite is None:
                continue
            same = {key: pg.ids[key] == lite.ids.get(key) for key in pg.ids}
            summary["postgresql_same_results"][str(seed.n)] = same
            differ = [key for key, ok in same.items() if not ok]
            print(
                f"  N={seed.n:,}: "
                + (f"yes ({len(same)} calls)" if not differ else "NO in " + ", ".join(differ))
            )
    for dialect, runs in (("sqlite", sqlite_app), ("postgresql", pg_app)):
        if runs:
            summary["targets"].update(_targets(DIALECTS[dialect], runs))
    return summary


def _targets(name: str, runs: list[Row]) -> dict[str, Any]:
    largest_seed, largest = max(runs, key=lambda row: row[0].n)
    smallest_seed, smallest = min(runs, key=lambda row: row[0].n)
    n_label = f"N={largest_seed.n:,}"
    print(f"\nTargets on {name} (medians; page and search at the largest N, {n_label}):")
    checks: list[tuple[str, bool, str]] = []
    page = largest.timings["page1"].median
    checks.append(
        (f"{name}: first page <= {TARGET_PAGE_MS:g} ms", page <= TARGET_PAGE_MS, f"{page:.2f} ms")
    )
    for key, label in (("search_en", "English"), ("search_zh", "Chinese")):
        value = largest.timings[key].median
        checks.append(
            (
                f"{name}: search ({label}) <= {TARGET_SEARCH_MS:g} ms",
                value <= TARGET_SEARCH_MS,
                f"{value:.2f} ms",
            )
        )
    worst_open = max(m.timings["open200"].median for _s, m in runs)
    checks.append(
        (f"{name}: open a 200-step thread <= {TARGET_OPEN_MS:g} ms (every N)",
         worst_open <= TARGET_OPEN_MS, f"worst {worst_open:.2f} ms")
    )  # fmt: skip
    rss_growth = largest.peak_rss_mb - smallest.peak_rss_mb
    py_growth = largest.py_peak_mb - smallest.py_peak_mb
    flat = rss_growth <= max(8.0, 0.1 * smallest.peak_rss_mb) and py_growth <= max(
        1.0, 0.25 * smallest.py_peak_mb
    )
    checks.append(
        (
            f"{name}: memory flat in N",
            flat,
            f"peak RSS {smallest.peak_rss_mb:.0f} -> {largest.peak_rss_mb:.0f} MB,"
            f" Python peak {smallest.py_peak_mb:.2f} -> {largest.py_peak_mb:.2f} MB"
            f" (N={smallest_seed.n:,} -> {largest_seed.n:,})",
        )
    )
    if largest_seed.n < TARGET_N:
        print(f"  (the targets are for {TARGET_N:,} threads; judged here at {n_label})")
    targets: dict[str, Any] = {}
    for label, ok, detail in checks:
        print(f"  {_verdict(ok)}  {label:<56} {detail}")
        targets[label] = {"pass": ok, "detail": detail}
    return targets


def print_plans(m: Measured) -> None:
    how = (
        "EXPLAIN (ANALYZE, BUFFERS) EXECUTE" if m.dialect == "postgresql" else "EXPLAIN QUERY PLAN"
    )
    print(f"\n{DIALECTS[m.dialect]}: {how} of the data layer's SELECTs at N={m.n:,}:")
    seen: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for name, statements in m.plans.items():
        for item in statements:
            key = (" ".join(item["sql"].split()), tuple(item["plan"]))
            seen.setdefault(key, []).append(name)
    for (sql, plan), names in seen.items():
        print(f"  [{', '.join(names)}] {sql}")
        for line in plan:
            print(f"      {line}")


# ---------------------------------------------------------------------------- main


def _sizes(value: str) -> list[int]:
    return [int(part.replace("_", "")) for part in value.split(",") if part.strip()]


def _messages_rule(value: str) -> list[tuple[int, int]]:
    """ "20,1000000=4": 20 messages a thread, 4 from 1,000,000 threads up."""
    rule: list[tuple[int, int]] = []
    try:
        for part in value.split(","):
            start, _eq, count = part.strip().rpartition("=")
            rule.append((int(start.replace("_", "")) if start else 0, int(count)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a messages rule: {value!r}") from None
    rule.sort()
    if not rule or rule[0][0] != 0 or any(c < 2 or c % 2 for _s, c in rule):
        raise argparse.ArgumentTypeError(
            f"{value!r}: give a count for every N (the first without N=) and even counts >= 2"
        )
    return rule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=_sizes, default=_sizes("1000,10000,100000,1000000"))
    parser.add_argument(
        "--messages",
        type=_messages_rule,
        default=_messages_rule(DEFAULT_MESSAGES),
        help=f"messages a thread, by N (default {DEFAULT_MESSAGES!r}: 4 from 1,000,000 up)",
    )
    parser.add_argument("--ref-sizes", type=_sizes, default=_sizes("100,1000"))
    parser.add_argument("--no-reference", action="store_true", help="skip Chainlit's layer")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite's column alone")
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per figure")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per figure, at most")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-threads"))
    parser.add_argument("--reuse", action="store_true", help="keep databases seeded before")
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child_main(args.child)
        return

    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    words = SEARCHES
    common_spec = {
        "repeat": args.repeat,
        "budget": args.budget,
        "words": words,
        "files": str(workdir / "files"),
        "out": str(workdir / "result.json"),
    }
    versions = {"sqlite": sqlite3.sqlite_version}
    server: PostgresServer | None = None
    settings: dict[str, str] = {}
    if not args.no_postgres:
        if not (PG_BIN / "postgres").exists():
            sys.exit(f"PostgreSQL is not installed ({PG_BIN / 'postgres'}); or --no-postgres")
        server = start_postgres(workdir, args.reuse)
        versions["postgresql"] = server.psql("SHOW server_version").split()[0]
        settings = pg_settings(server)
    rule = ", ".join(f"{c} from N={s:,}" if s else str(c) for s, c in args.messages)
    print(
        f"SQLite {versions['sqlite']}"
        + (f", PostgreSQL {versions['postgresql']}" if server else "")
        + f"; messages a thread: {rule}; one user; up to {args.repeat} timed calls per figure"
        " after warm-up",
        flush=True,
    )
    if server:
        print(
            "PostgreSQL's settings from initdb's file and PostgresServer (the rest are its"
            " defaults): " + ", ".join(f"{k}={v}" for k, v in settings.items()),
            flush=True,
        )

    try:
        ref: list[Row] = []
        if not args.no_reference:
            for n in args.ref_sizes:
                path = workdir / f"chainlit-{n}.db"
                messages = messages_for(n, args.messages)
                seed = (args.reuse and _reusable(path, n, messages)) or seed_chainlit(
                    path, n, messages
                )
                print(
                    f"chainlit N={n:,}: {'reused, ' if seed.reused else ''}seeded in"
                    f" {seed.seconds:.1f} s, measuring…",
                    flush=True,
                )
                spec = {
                    **common_spec,
                    "kind": "chainlit",
                    "dialect": "sqlite",
                    "db": str(path),
                    "url": f"sqlite+aiosqlite:///{path}",
                    "n": n,
                }
                ref.append((seed, run_child(spec)))

        app: list[Row] = []
        largest = max(args.sizes) if args.sizes else 0
        for n in args.sizes:
            messages = messages_for(n, args.messages)
            path = workdir / f"app-{n}.db"
            seed = (args.reuse and _reusable(path, n, messages)) or seed_app(path, n, messages)
            app.append(_measure_app(common_spec, seed, f"sqlite+aiosqlite:///{path}", largest))
            if server is not None:
                seed = (
                    args.reuse and reusable_postgres(server, workdir, n, messages)
                ) or seed_postgres(server, workdir, n, messages)
                app.append(_measure_app(common_spec, seed, server.url(seed.path), largest))
    finally:
        if server is not None:
            server.stop()

    rows = sorted(ref + app, key=lambda row: (row[0].n, row[1].kind))
    print()
    print_table(rows, versions)
    summary = summarise(app, ref)
    for _seed, m in app:
        if m.n == largest:
            print_plans(m)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    **versions,
                    "postgresql_settings": settings,
                    "messages": args.messages,
                    "words": words,
                    "runs": [{"seed": asdict(s), "measured": asdict(m)} for s, m in rows],
                    **summary,
                },
                ensure_ascii=False,
                indent=1,
            )
        )
        print(f"\nfigures written to {args.json}")


def _measure_app(common_spec: dict[str, Any], seed: SeedInfo, url: str, largest: int) -> Row:
    name = DIALECTS[seed.dialect]
    print(
        f"app N={seed.n:,} on {name}: {'reused, ' if seed.reused else ''}seeded in"
        f" {seed.seconds:.1f} s ({seed.size_mb:.0f} MB), measuring…",
        flush=True,
    )
    mid = asyncio.run(_mid_cursor(url, seed.n, Path(common_spec["files"])))
    spec = {
        **common_spec,
        "kind": "app",
        "dialect": seed.dialect,
        "db": seed.path,
        "url": url,
        "n": seed.n,
        "mid_cursor": mid,
        "explain": seed.n == largest,
    }
    return seed, run_child(spec)


if __name__ == "__main__":
    main()
