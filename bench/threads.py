"""Speed of the app's SQLite data layer beside Chainlit's SQLAlchemyDataLayer, by thread count.

For each N in --sizes (default 1,000, 10,000 and 100,000) it seeds a fresh database file with
N threads of 20 messages each (alternating user_message / assistant_message steps of short
English sentences from a few hundred words drawn with a seeded random; every tenth thread
mostly Chinese), all owned by one user, plus one 200-step thread. Thread names are the first
user message. Seeding uses bulk SQL (one `sqlite3` transaction of executemany calls after
`Database.migrate()` has made the schema) and fills the columns the data layer fills, search
rows (`index_text`) included; its time is printed but is not the figure of interest.

Then a fresh process (so that its peak memory is its own) opens a fresh `ChatDataLayer` on
the file and times, through the real async API:

  page 1    list_threads(Pagination(first=20), ThreadFilter(userId=...))
  page 2    the same with the endCursor page 1 returned
  mid page  the same with a cursor half-way down the list (the endCursor of a page of N/2,
            fetched beforehand in the parent process)
  open 200  get_thread() on the 200-step thread
  search    ThreadFilter(userId=..., search=...) for an English word found in 1 % of threads
            ("lighthouse") and a Chinese word found in 1 % ("灯塔"); for information only,
            also a common word found in about a third of them ("water"), one found in none
            ("zebra"), two words ("lighthouse water") and a single letter ("t", as a search
            box sends after one keystroke)

Each is run once or more as a warm-up, then repeated up to --repeat times (default 30, at least
5, stopping early once --budget seconds are spent); the table shows the median and p90 in ms.
Memory is the process's peak RSS (VmHWM) once the calls the targets are about have been timed
(the information-only searches run after them, and get their own peak) and the peak of Python
allocations (tracemalloc) over one more pass of those calls; both should stay flat as N grows.
The SQL the data layer issued is captured and its EXPLAIN QUERY PLAN printed for the largest N.

For reference, at --ref-sizes (default 100 and 1,000) the same data goes into a SQLite file
with the schema of Chainlit's SQLAlchemy data layer documentation (PostgreSQL types mapped to
SQLite; no indexes beyond the keys, as documented) and `SQLAlchemyDataLayer` is timed on page
1, page 2, opening the 200-step thread and both searches. The table ends with Chainlit's time
over the app's at N = 1,000 and PASS/MISS against the targets: page 1 <= 5 ms and search
<= 50 ms (medians) at the largest N (100,000 by default), opening a 200-step thread <= 10 ms
at every N, memory flat in N.

Run from the repository root with the project's venv (the 100,000 file takes ~1.5 GB and about
two minutes to seed; the whole run about eight minutes; --reuse keeps seeded files between runs):

    .venv/bin/python bench/threads.py [--sizes 1000,10000,100000] [--ref-sizes 100,1000]
        [--repeat 30] [--budget 20] [--workdir /tmp/bench-threads] [--reuse] [--json PATH]
"""

# ruff: noqa: E402  (Chainlit's app root must be set before chainlit is imported)

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("CHAINLIT_APP_ROOT", str(ROOT))  # else Chainlit writes a config in cwd

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
import sys
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from chainlit.data.base import BaseDataLayer
from chainlit.types import Pagination, ThreadFilter
from sqlalchemy import event

from chatllm.store.datalayer import ChatDataLayer
from chatllm.store.db import Database
from chatllm.store.files import FileStore
from chatllm.store.search import index_text, message_rowid, name_rowid

DATA_VERSION = 1  # bump when the generated data changes, so --reuse re-seeds
SEED = 20240601
STEPS_PER_THREAD = 20
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
    "common": f"{COMMON_WORD!r} (~38 % of threads)",
    "none": f"{NONE_WORD!r} (no thread)",
    "pair": f"{PAIR_WORDS!r}",
    "letter": f"{LETTER!r} (1 letter)",
}

TARGET_PAGE_MS = 5.0
TARGET_SEARCH_MS = 50.0
TARGET_OPEN_MS = 10.0
TEAM_CHAINLIT_PAGE_MS = 1060.0  # measured by the team at 1,000 threads x 20 steps
TEAM_CHAINLIT_SEARCH_MS = 1230.0
MIN_REPEAT = 5

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
        id=BIG_THREAD_ID if steps == BIG_THREAD_STEPS else _uuid(rng),
        name=texts[0][:255],
        created=messages[0].created,
        updated=messages[-1].created,
        messages=messages,
    )


def generate(n: int) -> Iterator[ThreadData]:
    """N threads, oldest first (distinct, increasing last activity), then the 200-step
    thread, older than all of them."""
    rng = random.Random(SEED)
    for index in range(n):
        yield _thread(rng, index, BASE_TIME + index * THREAD_SPACING, STEPS_PER_THREAD)
    big = random.Random(SEED + 1)
    yield _thread(big, -1, BASE_TIME - timedelta(days=1), BIG_THREAD_STEPS)


_EN_MATCH = re.compile(rf"\b{EN_WORD}", re.I)
_COMMON_MATCH = re.compile(rf"\b{COMMON_WORD}", re.I)


def _matches(thread: ThreadData) -> tuple[bool, bool, bool]:
    """Whether the thread's messages hold each search word (as the searches find them)."""
    body = "\n".join(m.text for m in thread.messages)
    return bool(_EN_MATCH.search(body)), ZH_WORD in body, bool(_COMMON_MATCH.search(body))


@dataclass
class SeedInfo:
    path: str
    n: int
    seconds: float
    size_mb: float
    threads: int
    steps: int
    hits: dict[str, int]
    reused: bool = False
    version: int = DATA_VERSION


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _reusable(path: Path, n: int) -> SeedInfo | None:
    sidecar = Path(str(path) + ".json")
    if not (path.exists() and sidecar.exists()):
        return None
    try:
        info = SeedInfo(**json.loads(sidecar.read_text()))
    except (TypeError, ValueError):
        return None
    if info.n != n or info.version != DATA_VERSION:
        return None
    info.reused = True
    return info


def _bulk_connection(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=OFF")  # a fresh file: nothing to roll back to
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-512000")  # 500 MB: random uuid keys in big indexes
    return con


def seed_app(path: Path, n: int) -> SeedInfo:
    """The app's database: schema by its migrations, rows by bulk SQL."""
    _remove_db(path)
    started = time.perf_counter()

    async def migrate() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        try:
            await db.migrate()
        finally:
            await db.close()

    asyncio.run(migrate())
    con = _bulk_connection(path)
    created = stamp(BASE_TIME - timedelta(days=30))
    hits = {"en": 0, "zh": 0, "common": 0}
    threads = steps = 0
    step_seq = 0
    con.execute("BEGIN")
    con.execute(
        "INSERT INTO users (id, identifier, password_hash, metadata, created_at)"
        " VALUES (?, ?, NULL, '{}', ?)",
        (USER_ID, USER_IDENTIFIER, created),
    )
    data = generate(n)
    while batch := list(itertools.islice(data, 2000)):
        thread_rows: list[tuple[Any, ...]] = []
        step_rows: list[tuple[Any, ...]] = []
        search_rows: list[tuple[Any, ...]] = []
        for thread in batch:
            threads += 1
            thread_seq = threads
            thread_rows.append(
                (thread_seq, thread.id, USER_ID, thread.name, APP_THREAD_METADATA, "[]",
                 thread.created, thread.updated)
            )  # fmt: skip
            search_rows.append((name_rowid(thread_seq), index_text(thread.name)))
            for m in thread.messages:
                step_seq += 1
                step_rows.append(
                    (step_seq, m.id, thread.id, None, m.type, m.author, None, m.text, 0, "{}",
                     APP_STEP_EXTRA, m.created, m.created, m.created)
                )  # fmt: skip
                search_rows.append((message_rowid(thread_seq, step_seq), index_text(m.text)))
            steps += len(thread.messages)
            if thread.index >= 0:
                for key, hit in zip(("en", "zh", "common"), _matches(thread), strict=True):
                    hits[key] += hit
        con.executemany(
            "INSERT INTO threads (seq, id, user_id, name, metadata, tags, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            thread_rows,
        )
        con.executemany(
            "INSERT INTO steps (seq, id, thread_id, parent_id, type, name, input, output,"
            " is_error, metadata, extra, created_at, start_time, end_time)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            step_rows,
        )
        con.executemany("INSERT INTO search (rowid, body) VALUES (?, ?)", search_rows)
    con.execute("COMMIT")
    con.execute("PRAGMA journal_mode=WAL")  # as the app leaves it
    con.close()
    return _seeded(path, n, started, threads, steps, hits)


def seed_chainlit(path: Path, n: int) -> SeedInfo:
    """The same threads in the schema of Chainlit's SQLAlchemy data layer."""
    _remove_db(path)
    started = time.perf_counter()
    con = _bulk_connection(path)
    for statement in CHAINLIT_SCHEMA:
        con.execute(statement)
    hits = {"en": 0, "zh": 0, "common": 0}
    threads = steps = 0
    con.execute("BEGIN")
    con.execute(
        'INSERT INTO users ("id", "identifier", "metadata", "createdAt") VALUES (?, ?, ?, ?)',
        (USER_ID, USER_IDENTIFIER, "{}", stamp(BASE_TIME - timedelta(days=30))),
    )
    data = generate(n)
    while batch := list(itertools.islice(data, 2000)):
        thread_rows: list[tuple[Any, ...]] = []
        step_rows: list[tuple[Any, ...]] = []
        for thread in batch:
            threads += 1
            thread_rows.append(
                (thread.id, thread.created, thread.name, USER_ID, USER_IDENTIFIER, None,
                 APP_THREAD_METADATA)
            )  # fmt: skip
            for m in thread.messages:
                step_rows.append(
                    (m.id, m.author, m.type, thread.id, None, False, False, False, "{}", None,
                     None, m.text, m.created, None, m.created, m.created, "{}", None, None)
                )  # fmt: skip
            steps += len(thread.messages)
            if thread.index >= 0:
                for key, hit in zip(("en", "zh", "common"), _matches(thread), strict=True):
                    hits[key] += hit
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
    return _seeded(path, n, started, threads, steps, hits)


def _seeded(
    path: Path, n: int, started: float, threads: int, steps: int, hits: dict[str, int]
) -> SeedInfo:
    info = SeedInfo(
        path=str(path),
        n=n,
        seconds=time.perf_counter() - started,
        size_mb=path.stat().st_size / 2**20,
        threads=threads,
        steps=steps,
        hits=hits,
    )
    Path(str(path) + ".json").write_text(json.dumps(asdict(info)))
    return info


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
    kind: str
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
    """Run in a child process: time one data layer on one seeded file."""
    kind: str = spec["kind"]
    path = Path(spec["db"])
    url = f"sqlite+aiosqlite:///{path}"
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
    result = Measured(kind=kind, n=spec["n"], base_rss_mb=_proc_status_mb("VmRSS"))
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
        result.plans = await _plans(db, path, calls)
    await layer.close()
    return result


def _search_call(layer: BaseDataLayer, word: str) -> Callable[[], Awaitable[Any]]:
    return lambda: layer.list_threads(Pagination(first=PAGE), _filter(word))


async def _plans(
    db: Database, path: Path, calls: dict[str, Callable[[], Awaitable[Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """The SELECTs each call issues, with SQLite's EXPLAIN QUERY PLAN for each."""
    issued: list[tuple[str, Any]] = []

    def capture(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            issued.append((statement, parameters))

    event.listen(db.reader.sync_engine, "before_cursor_execute", capture)
    plans: dict[str, list[dict[str, Any]]] = {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for name, call in calls.items():
            issued.clear()
            await call()
            plans[name] = []
            for statement, parameters in issued:
                rows = con.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
                plans[name].append({"sql": statement, "plan": _plan_tree(rows)})
    finally:
        con.close()
        event.remove(db.reader.sync_engine, "before_cursor_execute", capture)
    return plans


def _plan_tree(rows: list[tuple[int, int, int, str]]) -> list[str]:
    depth: dict[int, int] = {0: -1}
    lines: list[str] = []
    for node, parent, _unused, detail in rows:
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node] + detail)
    return lines


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


async def _mid_cursor(path: Path, n: int, files: Path) -> str | None:
    """The endCursor of a page holding the newer half of the list: a cursor half-way down."""
    db = Database(f"sqlite+aiosqlite:///{path}")
    layer = ChatDataLayer(db, FileStore(files))
    try:
        page = await layer.list_threads(Pagination(first=max(PAGE, n // 2)), _filter())
        return page.pageInfo.endCursor
    finally:
        await layer.close()


# ---------------------------------------------------------------------------- report


def _ms(timing: Timing | None, p90: bool = True) -> str:
    if timing is None:
        return "-"

    def fmt(v: float) -> str:
        return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"

    return f"{fmt(timing.median)}/{fmt(timing.p90)}" if p90 else fmt(timing.median)


def print_table(rows: list[tuple[SeedInfo, Measured]]) -> None:
    head = (
        f"{'N':>7} {'path':<8} {'seed s':>6} {'db MB':>6} {'page 1':>11} {'page 2':>7}"
        f" {'mid pg':>7} {'open 200':>11} {'search en':>11} {'search zh':>11}"
        f" {'RSS MB':>7} {'py MB':>6}"
    )
    print(head)
    print("-" * len(head))
    for seed, m in rows:
        t = m.timings
        print(
            f"{m.n:>7,} {m.kind:<8} {seed.seconds:>6.1f} {seed.size_mb:>6.0f}"
            f" {_ms(t.get('page1')):>11} {_ms(t.get('page2'), False):>7}"
            f" {_ms(t.get('page_mid'), False):>7} {_ms(t.get('open200')):>11}"
            f" {_ms(t.get('search_en')):>11} {_ms(t.get('search_zh')):>11}"
            f" {m.peak_rss_mb:>7.0f} {m.py_peak_mb:>6.2f}"
        )
    print(
        "times in ms, median/p90 (single figures: median); page 2 via page 1's endCursor, mid pg"
        " half-way down the list; search en / zh: a word in 1 % of the threads; RSS = peak"
        " resident memory of the measuring process after these calls; py = peak Python"
        " allocations over one more pass of them"
    )
    info = [(seed, m) for seed, m in rows if m.kind == "app"]
    if not info:
        return
    print("\nOther searches on the app's layer, for information (ms, median/p90):")
    head = (
        f"{'N':>7}"
        + "".join(f" {label:>26}" for label in INFO_SEARCHES.values())
        + f" {'RSS MB':>7} {'py MB':>6}"
    )
    print(head)
    print("-" * len(head))
    for _seed, m in info:
        cells = "".join(f" {_ms(m.timings.get('search_' + k)):>26}" for k in INFO_SEARCHES)
        print(f"{m.n:>7,}{cells} {m.peak_rss_all_mb:>7.0f} {m.py_peak_all_mb:>6.2f}")
    print("RSS / py here: the same peaks once these searches have run too")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def summarise(
    app: list[tuple[SeedInfo, Measured]], ref: list[tuple[SeedInfo, Measured]]
) -> dict[str, Any]:
    summary: dict[str, Any] = {"ratios": {}, "targets": {}, "same_results": {}}
    for seed, _m in app:
        share = {k: f"{v:,} ({100 * v / seed.n:.1f} %)" for k, v in seed.hits.items()}
        print(
            f"N={seed.n:,}: {seed.threads:,} threads, {seed.steps:,} steps; threads matching"
            f" {EN_WORD!r}: {share['en']}, {ZH_WORD!r}: {share['zh']},"
            f" {COMMON_WORD!r}: {share['common']}"
        )
    app_1000 = next((m for s, m in app if s.n == 1000), None)
    ref_1000 = next((m for s, m in ref if s.n == 1000), None)
    if app_1000 and ref_1000:
        print("\nChainlit SQLAlchemyDataLayer / app at N=1,000 (median over median):")
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
    if not app:
        return summary
    largest_seed, largest = max(app, key=lambda row: row[0].n)
    smallest_seed, smallest = min(app, key=lambda row: row[0].n)
    n_label = f"N={largest_seed.n:,}"
    print(f"\nTargets (medians; page and search at the largest N, {n_label}):")
    checks: list[tuple[str, bool, str]] = []
    page = largest.timings["page1"].median
    checks.append(("first page <= 5 ms", page <= TARGET_PAGE_MS, f"{page:.2f} ms"))
    for key, label in (("search_en", "English"), ("search_zh", "Chinese")):
        value = largest.timings[key].median
        checks.append((f"search ({label}) <= 50 ms", value <= TARGET_SEARCH_MS, f"{value:.2f} ms"))
    worst_open = max(m.timings["open200"].median for _s, m in app)
    checks.append(
        ("open a 200-step thread <= 10 ms (every N)", worst_open <= TARGET_OPEN_MS,
         f"worst {worst_open:.2f} ms")
    )  # fmt: skip
    rss_growth = largest.peak_rss_mb - smallest.peak_rss_mb
    py_growth = largest.py_peak_mb - smallest.py_peak_mb
    flat = rss_growth <= max(8.0, 0.1 * smallest.peak_rss_mb) and py_growth <= max(
        1.0, 0.25 * smallest.py_peak_mb
    )
    checks.append(
        (
            "memory flat in N",
            flat,
            f"peak RSS {smallest.peak_rss_mb:.0f} -> {largest.peak_rss_mb:.0f} MB,"
            f" Python peak {smallest.py_peak_mb:.2f} -> {largest.py_peak_mb:.2f} MB"
            f" (N={smallest_seed.n:,} -> {largest_seed.n:,})",
        )
    )
    if largest_seed.n < 100_000:
        print(f"  (the targets are for 100,000 threads; judged here at {n_label})")
    for label, ok, detail in checks:
        print(f"  {_verdict(ok)}  {label:<42} {detail}")
        summary["targets"][label] = {"pass": ok, "detail": detail}
    return summary


def print_plans(m: Measured) -> None:
    print(f"\nEXPLAIN QUERY PLAN of the data layer's SELECTs at N={m.n:,}:")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=_sizes, default=_sizes("1000,10000,100000"))
    parser.add_argument("--ref-sizes", type=_sizes, default=_sizes("100,1000"))
    parser.add_argument("--no-reference", action="store_true", help="skip Chainlit's layer")
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per figure")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per figure, at most")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-threads"))
    parser.add_argument("--reuse", action="store_true", help="keep files seeded before")
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
    print(
        f"SQLite {sqlite3.sqlite_version}; {STEPS_PER_THREAD} steps a thread, one user;"
        f" up to {args.repeat} timed calls per figure after warm-up", flush=True
    )  # fmt: skip

    ref: list[tuple[SeedInfo, Measured]] = []
    if not args.no_reference:
        for n in args.ref_sizes:
            path = workdir / f"chainlit-{n}.db"
            seed = (args.reuse and _reusable(path, n)) or seed_chainlit(path, n)
            print(
                f"chainlit N={n:,}: {'reused, ' if seed.reused else ''}seeded in"
                f" {seed.seconds:.1f} s, measuring…",
                flush=True,
            )
            spec = {**common_spec, "kind": "chainlit", "db": str(path), "n": n}
            ref.append((seed, run_child(spec)))

    app: list[tuple[SeedInfo, Measured]] = []
    largest = max(args.sizes) if args.sizes else 0
    for n in args.sizes:
        path = workdir / f"app-{n}.db"
        seed = (args.reuse and _reusable(path, n)) or seed_app(path, n)
        print(
            f"app N={n:,}: {'reused, ' if seed.reused else ''}seeded in {seed.seconds:.1f} s"
            f" ({seed.size_mb:.0f} MB), measuring…",
            flush=True,
        )
        mid = asyncio.run(_mid_cursor(path, n, workdir / "files"))
        spec = {
            **common_spec,
            "kind": "app",
            "db": str(path),
            "n": n,
            "mid_cursor": mid,
            "explain": True,
        }
        app.append((seed, run_child(spec)))

    rows = sorted(ref + app, key=lambda row: (row[0].n, row[1].kind))
    print()
    print_table(rows)
    summary = summarise(app, ref)
    if app:
        print_plans(next(m for s, m in app if s.n == largest))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "sqlite": sqlite3.sqlite_version,
                    "words": words,
                    "runs": [{"seed": asdict(s), "measured": asdict(m)} for s, m in rows],
                    **summary,
                },
                ensure_ascii=False,
                indent=1,
            )
        )
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    main()
