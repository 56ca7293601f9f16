"""A thread out as Markdown or JSON (receipts included), and a JSON export back in.

The JSON document describes itself:

    {"format": "chatllm.thread", "version": 1, "exported_at": …,
     "thread": {"id", "name", "created_at", "tags",
                "metadata": {"chat_settings", "chat_profile", "chosen_replies"}},
     "messages": [{"id", "role": "user" | "assistant", "author", "text", "created_at",
                   "is_error", "extra" (any other step metadata, as stored),
                   and for replies: "kind", "reply_to", "finish_reason", "receipt",
                   "compare", "replay_of"}, …],
     "elements": [{"name", "for": a message id, "display", "props"}, …]}

Messages are the conversation in order: Chainlit's run and tool steps around them are left
out, and so is a reference to a message that is no longer there. Only custom elements (the
receipt and comparison views) travel; uploaded files do not. An import becomes a new thread
of the importing user, with new ids throughout and every reference between messages
(reply_to, replay_of, chosen_replies, an element's message) pointed at the new ones.

    python -m chatllm threads [--user NAME] [--search TEXT] [--limit N]
    python -m chatllm export THREAD_ID [--format json|md] [--lang LANG] [-o FILE]
    python -m chatllm import FILE [--user NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import re
import sys
import uuid
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from chainlit.element import CustomElement
from chainlit.step import StepDict
from chainlit.types import Pagination, ThreadDict, ThreadFilter
from chainlit.user import PersistedUser, User
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chatllm.auth import LOCAL_USER
from chatllm.config import Settings
from chatllm.errors import ChatLLMError, StoreError
from chatllm.history import CHOSEN_REPLIES, CONVERSATION_KINDS, FINISH_REASON, KIND, REPLY_TO
from chatllm.i18n import normalize, t
from chatllm.receipts import RECEIPT, receipt_of
from chatllm.sampling import Sampling
from chatllm.store import ChatDataLayer, FileStore, migrated
from chatllm.store.users import NoSuchUser

FORMAT = "chatllm.thread"
VERSION = 1

COMPARE = "compare"
REPLAY_OF = "replay_of"
#: Step metadata that has a field of its own in an exported message.
REPLY_FIELDS = (KIND, REPLY_TO, FINISH_REASON, RECEIPT, COMPARE, REPLAY_OF)
#: Thread metadata worth carrying to another database; the rest is Chainlit's session copy.
THREAD_METADATA = ("chat_settings", "chat_profile", CHOSEN_REPLIES)
#: Assistant messages that only served the session they were shown in (download links).
SESSION_KINDS = frozenset({"export"})
ROLE_OF_STEP = {"user_message": "user", "assistant_message": "assistant"}
IMPORTED_SUFFIX = " (imported)"

T = TypeVar("T")


class TransferError(ChatLLMError):
    """A thread could not be exported or imported."""


class ThreadNotFound(TransferError):
    """No thread has that id."""


class InvalidDocument(TransferError):
    """The file is not a chatllm thread export this version can read."""


# ---- the document


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ThreadMetadata(_Strict):
    chat_settings: dict[str, Any] | None = None
    chat_profile: str | None = None
    chosen_replies: dict[str, str] | None = None


class ThreadInfo(_Strict):
    id: str | None = None
    name: str | None = None
    created_at: str | None = None
    tags: list[str] = Field(default_factory=list)
    metadata: ThreadMetadata = Field(default_factory=ThreadMetadata)


class CompareReply(BaseModel):
    """One column of a comparison. Unknown keys are kept: the whole comparison travels as
    it was stored."""

    model_config = ConfigDict(extra="allow", strict=True)

    label: str
    text: str
    receipt: dict[str, Any] | None = None
    error: str | None = None


class Comparison(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    replies: list[CompareReply]


class MessageEntry(_Strict):
    id: str = Field(min_length=1)
    role: Literal["user", "assistant"]
    text: str
    created_at: str
    author: str | None = None
    is_error: bool = False
    kind: str | None = None
    reply_to: str | None = None
    finish_reason: str | None = None
    #: Stored as it was, not re-validated, so that it comes back exactly.
    receipt: dict[str, Any] | None = None
    compare: dict[str, Any] | None = None
    replay_of: str | None = None
    #: Other step metadata, kept as it was.
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("created_at")
    @classmethod
    def _timestamp(cls, value: str) -> str:
        _parse_time(value)
        return value

    @field_validator("compare")
    @classmethod
    def _comparison(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            Comparison.model_validate(value)
        return value

    def comparison(self) -> list[CompareReply]:
        return Comparison.model_validate(self.compare).replies if self.compare else []


class ElementEntry(_Strict):
    model_config = ConfigDict(populate_by_name=True)

    name: str
    for_: str | None = Field(default=None, alias="for")
    display: Literal["inline", "side", "page"] = "inline"
    props: dict[str, Any]


class ThreadDocument(_Strict):
    format: Literal["chatllm.thread"]
    version: Literal[1]
    exported_at: str | None = None
    thread: ThreadInfo
    messages: list[MessageEntry]
    elements: list[ElementEntry] = Field(default_factory=list)


def parse_document(document: object) -> ThreadDocument:
    """A thread document checked through: its format and version, every field's type, and
    that every reference names a message of the document. Raises InvalidDocument saying
    what is wrong."""
    if isinstance(document, ThreadDocument):
        return document
    if not isinstance(document, Mapping) or document.get("format") != FORMAT:
        raise InvalidDocument(f'this is not a chatllm thread export (no "format": "{FORMAT}")')
    version = document.get("version")
    if type(version) is not int or version != VERSION:
        raise InvalidDocument(
            f"this export has version {version!r} of the thread format; "
            f"this chatllm reads version {VERSION}"
        )
    try:
        parsed = ThreadDocument.model_validate(document)
    except ValidationError as exc:
        problems = [f"{_location(error['loc'])}: {error['msg']}" for error in exc.errors()]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InvalidDocument(
            f"the thread export is malformed: {'; '.join(problems[:5])}{more}"
        ) from None
    _check_references(parsed)
    return parsed


def load_document(text: str) -> ThreadDocument:
    """A thread document from the text of an exported JSON file."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise InvalidDocument(f"the file is not JSON ({where}: {exc.msg})") from None
    except RecursionError:
        raise InvalidDocument("the file is JSON nested too deeply to be an export") from None
    return parse_document(raw)


def _check_references(document: ThreadDocument) -> None:
    roles: dict[str, str] = {}
    for n, message in enumerate(document.messages):
        if message.id in roles:
            raise InvalidDocument(f"messages[{n}].id: {message.id!r} appears twice")
        roles[message.id] = message.role
        if message.role == "user":
            given = [key for key in REPLY_FIELDS if getattr(message, key) is not None]
            if given:
                raise InvalidDocument(
                    f"messages[{n}] is the user's, but has {', '.join(given)}; "
                    "only replies have those"
                )

    def must_be(where: str, message_id: str | None, role: str) -> None:
        if message_id is not None and roles.get(message_id) != role:
            raise InvalidDocument(f"{where}: {message_id!r} names no {role} message of this file")

    for n, message in enumerate(document.messages):
        must_be(f"messages[{n}].reply_to", message.reply_to, "user")
        must_be(f"messages[{n}].replay_of", message.replay_of, "assistant")
    for asked, reply in (document.thread.metadata.chosen_replies or {}).items():
        must_be("thread.metadata.chosen_replies", asked, "user")
        must_be(f"thread.metadata.chosen_replies[{asked!r}]", reply, "assistant")
    for n, element in enumerate(document.elements):
        if element.for_ is not None and element.for_ not in roles:
            raise InvalidDocument(f"elements[{n}].for: {element.for_!r} names no message")


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "document"


# ---- export


async def export_thread(store: ChatDataLayer, thread_id: str) -> dict[str, Any]:
    """The thread as a self-describing JSON document (see the module's docstring)."""
    thread = await store.get_thread(thread_id)
    if thread is None:
        raise ThreadNotFound(f"there is no thread {thread_id!r}")
    messages = [_exported_message(step) for step in conversation_steps(thread)]
    roles = {message["id"]: message["role"] for message in messages}
    for message in messages:
        # A reference to a message that is gone (or never was one) would point at nothing.
        for key, role in ((REPLY_TO, "user"), (REPLAY_OF, "assistant")):
            if key in message and roles.get(message[key]) != role:
                message[key] = None
    saved = thread.get("metadata") or {}
    metadata: dict[str, Any] = {key: saved[key] for key in THREAD_METADATA if key in saved}
    if isinstance(metadata.get(CHOSEN_REPLIES), Mapping):
        metadata[CHOSEN_REPLIES] = {
            asked: reply
            for asked, reply in metadata[CHOSEN_REPLIES].items()
            if roles.get(asked) == "user" and roles.get(reply) == "assistant"
        }
    return {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": _now(),
        "thread": {
            "id": thread["id"],
            "name": thread.get("name"),
            "created_at": thread.get("createdAt"),
            "tags": list(thread.get("tags") or []),
            "metadata": metadata,
        },
        "messages": messages,
        "elements": [
            {
                "name": element.get("name") or "",
                "for": element.get("forId"),
                "display": element.get("display") or "inline",
                "props": element.get("props") or {},
            }
            for element in thread.get("elements") or []
            if element.get("type") == "custom"
            and (element.get("forId") is None or element.get("forId") in roles)
        ],
    }


def conversation_steps(thread: ThreadDict) -> list[StepDict]:
    """The thread's user and assistant messages in order, errors included; the run and
    tool steps Chainlit wraps them in, and messages that only served their session, are
    not part of the conversation."""
    return [
        step
        for step in thread.get("steps") or []
        if step.get("type") in ROLE_OF_STEP
        and (step.get("metadata") or {}).get(KIND) not in SESSION_KINDS
    ]


def _exported_message(step: StepDict) -> dict[str, Any]:
    metadata = dict(step.get("metadata") or {})
    role = ROLE_OF_STEP[step.get("type") or ""]
    message: dict[str, Any] = {
        "id": step["id"],
        "role": role,
        "author": step.get("name"),
        "text": step.get("output") or "",
        "created_at": step.get("createdAt") or "",
        "is_error": bool(step.get("isError")),
    }
    if role == "assistant":
        for key in REPLY_FIELDS:
            message[key] = metadata.pop(key, None)
    if metadata:
        message["extra"] = metadata
    return message


# ---- import


async def import_thread(store: ChatDataLayer, document: object, user_identifier: str) -> str:
    """Add an exported thread as a new thread of `user_identifier`; returns its id.

    The document is checked through before anything is written (InvalidDocument). All or
    nothing: if a write fails, what was written of the new thread is deleted again.
    Runs outside the caller's Chainlit session, if any: the thread's owner is the user
    named here, and no write waits for that session's first message.
    """
    parsed = parse_document(document)
    return await _outside_chainlit(_write_thread(store, parsed, user_identifier))


async def _outside_chainlit(work: Coroutine[Any, Any, T]) -> T:
    # An empty context has no Chainlit session: the data layer then writes at once and
    # takes the owner from the call instead of from the session's user.
    return await asyncio.create_task(work, context=contextvars.Context())


async def _write_thread(store: ChatDataLayer, document: ThreadDocument, identifier: str) -> str:
    user = await _user(store, identifier, create_local=True)
    if user is None:
        raise NoSuchUser(f"the user {identifier!r} could not be created")
    thread_id = str(uuid.uuid4())
    new_ids = {message.id: str(uuid.uuid4()) for message in document.messages}
    info = document.thread
    metadata: dict[str, Any] = info.metadata.model_dump(exclude_none=True)
    if CHOSEN_REPLIES in metadata:
        metadata[CHOSEN_REPLIES] = {
            new_ids[asked]: new_ids[reply] for asked, reply in metadata[CHOSEN_REPLIES].items()
        }
    try:
        await store.update_thread(
            thread_id,
            name=_imported_name(document),
            user_id=user.id,
            metadata=metadata,
            tags=list(info.tags),
        )
        for message, created in zip(document.messages, _ordered_times(document), strict=True):
            await store.save_step(_step(message, thread_id, new_ids, created))
        for element in document.elements:
            await store.create_element(
                CustomElement(
                    name=element.name,
                    props=dict(element.props),
                    display=element.display,
                    for_id=new_ids[element.for_] if element.for_ is not None else None,
                    thread_id=thread_id,
                )
            )
    except BaseException as exc:
        await store.delete_thread(thread_id)
        if isinstance(exc, Exception) and not isinstance(exc, ChatLLMError):
            raise StoreError(f"the thread could not be imported ({exc}); nothing was kept") from exc
        raise
    return thread_id


def _step(
    message: MessageEntry, thread_id: str, new_ids: Mapping[str, str], created: str
) -> StepDict:
    metadata: dict[str, Any] = dict(message.extra)
    for key in REPLY_FIELDS:
        value = getattr(message, key)
        if key in (REPLY_TO, REPLAY_OF) and value is not None:
            value = new_ids[value]
        if value is not None:
            metadata[key] = value
    user = message.role == "user"
    # What Chainlit's Message.to_dict() writes, so that resuming the thread works as usual.
    return StepDict(
        id=new_ids[message.id],
        threadId=thread_id,
        parentId=None,
        type="user_message" if user else "assistant_message",
        name=message.author or ("User" if user else "chatllm"),
        input="",
        output=message.text,
        createdAt=created,
        start=created,
        end=created,
        isError=message.is_error,
        metadata=metadata,
        streaming=False,
        waitForAnswer=False,
    )


def _ordered_times(document: ThreadDocument) -> list[str]:
    """The messages' times in the data layer's format, never earlier than the message
    before: the thread is read back in time order, and must come back in this order."""
    times: list[str] = []
    latest = datetime.min.replace(tzinfo=UTC)
    for message in document.messages:
        latest = max(latest, _parse_time(message.created_at))
        times.append(_format_time(latest))
    return times


def _imported_name(document: ThreadDocument) -> str:
    name = document.thread.name
    if not name:
        first = next((m.text for m in document.messages if m.role == "user"), "")
        name = " ".join(first.split())[:60] or "Untitled"
    return name + IMPORTED_SUFFIX


async def _user(
    store: ChatDataLayer, identifier: str, *, create_local: bool
) -> PersistedUser | None:
    """The stored user; the local user may not be stored yet (before the first visit)."""
    user = await store.get_user(identifier)
    if user is None and identifier == LOCAL_USER:
        return await store.create_user(User(identifier=LOCAL_USER)) if create_local else None
    if user is None:
        raise NoSuchUser(f"there is no user {identifier!r}")
    return user


# ---- Markdown

_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "you": "You",
        "assistant": "Assistant",
        "untitled": "Untitled",
        "started": "started {when}",
        "exported": "exported {when}",
        "messages": "{count} messages",
        "model": "Model",
        "tags": "Tags",
        "variant": "reply {n} of {of}",
        "chosen": "the conversation continues from this one",
        "replay": "replay",
        "compare": "comparison",
        "error": "error",
        "failed": "failed: {error}",
        "unset": "not set",
    },
    "zh-TW": {
        "you": "你",
        "assistant": "助理",
        "untitled": "未命名",
        "started": "開始於 {when}",
        "exported": "匯出於 {when}",
        "messages": "{count} 則訊息",
        "model": "模型",
        "tags": "標籤",
        "variant": "第 {n} 個回覆（共 {of} 個）",
        "chosen": "對話從這個回覆延續",
        "replay": "重播",
        "compare": "比較",
        "error": "錯誤",
        "failed": "失敗：{error}",
        "unset": "未設定",
    },
    "zh-CN": {
        "you": "你",
        "assistant": "助手",
        "untitled": "未命名",
        "started": "开始于 {when}",
        "exported": "导出于 {when}",
        "messages": "{count} 条消息",
        "model": "模型",
        "tags": "标签",
        "variant": "第 {n} 个回复（共 {of} 个）",
        "chosen": "对话从这个回复继续",
        "replay": "重放",
        "compare": "比较",
        "error": "错误",
        "failed": "失败：{error}",
        "unset": "未设置",
    },
}

# Characters with a meaning inside a line of Markdown; escaped in names, labels, receipts.
_INLINE = re.compile(r"([\\`*_\[\]<>#|~!&])")
# A line starting like a heading, a rule, a setext underline, a list, a quote, a fence or a
# table: in the user's words it is escaped, so it stays words.
_BLOCK_START = re.compile(r"^( {0,3})([#=\-+*_>`~|])")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def to_markdown(document: object, lang: str = "en") -> str:
    """The thread as Markdown to read: its settings, then each message under a heading,
    each reply with its receipt's summary under it, a comparison as one section per reply.

    Every message is a block quote, which nothing inside it can close: a heading, a rule or
    an unclosed code fence in a message stays in it. The user's words are also escaped to
    read as written; replies keep their Markdown.
    """
    doc = parse_document(document)
    words = _WORDS[normalize(lang)]
    info = doc.thread
    about = ["chatllm"]
    if info.created_at:
        about.append(words["started"].format(when=_when(info.created_at)))
    if doc.exported_at:
        about.append(words["exported"].format(when=_when(doc.exported_at)))
    about.append(words["messages"].format(count=len(doc.messages)))
    lines = [f"# {_inline(info.name or words['untitled'])}", "", f"*{_inline(' · '.join(about))}*"]
    lines += ["", *_settings_lines(info, words, lang), "---", ""]
    numbers = _reply_numbers(doc)
    for message in doc.messages:
        if message.role == "user":
            lines += [f"## {_inline(words['you'])} · {_when(message.created_at)}", ""]
            lines += [_quote(message.text, literal=True), ""]
            continue
        labels = [words["assistant"]]
        if message.is_error:
            labels.append(words["error"])
        if message.id in numbers:
            n, of, chosen = numbers[message.id]
            labels.append(words["variant"].format(n=n, of=of))
            if chosen:
                labels.append(words["chosen"])
        elif message.kind == "replay":
            labels.append(words["replay"])
        elif message.kind == COMPARE:
            labels.append(words["compare"])
        heading = " · ".join([*map(_inline, labels), _when(message.created_at)])
        lines += [f"## {heading}", ""]
        if message.text or not message.compare:
            lines += [_quote(message.text, literal=False), ""]
        lines += _receipt_lines(message.receipt, lang)
        for reply in message.comparison():
            lines += [f"### {_inline(reply.label)}", ""]
            if reply.text:
                lines += [_quote(reply.text, literal=False), ""]
            if reply.error:
                lines += [f"*{_inline(words['failed'].format(error=reply.error))}*", ""]
            lines += _receipt_lines(reply.receipt, lang)
    return "\n".join(lines).rstrip("\n") + "\n"


def _settings_lines(info: ThreadInfo, words: Mapping[str, str], lang: str) -> list[str]:
    lines: list[str] = []
    metadata = info.metadata
    if metadata.chat_profile:
        lines.append(f"- **{_inline(words['model'])}:** {_inline(metadata.chat_profile)}")
    system_prompt: str | None = None
    for key, value in (metadata.chat_settings or {}).items():
        if key == "system_prompt" and isinstance(value, str):
            system_prompt = value
            continue
        label = t(key, lang) if key in Sampling.model_fields else key
        lines.append(f"- **{_inline(label)}:** {_inline(_setting(value, words))}")
    if info.tags:
        lines.append(f"- **{_inline(words['tags'])}:** {_inline(', '.join(info.tags))}")
    if lines:
        lines.append("")
    if system_prompt:
        lines += [
            f"**{_inline(t('system_prompt', lang))}:**",
            "",
            _quote(system_prompt, literal=True),
            "",
        ]
    return lines


def _setting(value: Any, words: Mapping[str, str]) -> str:
    if value is None or value == "":
        return words["unset"]
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def _reply_numbers(doc: ThreadDocument) -> dict[str, tuple[int, int, bool]]:
    """For a message answered more than once (regenerated): each reply's number, how
    many there are, and whether the conversation continues from it, as chatllm.history
    decides: the chosen one, else the newest."""
    replies: dict[str, list[str]] = {}
    for message in doc.messages:
        if (
            message.reply_to is not None
            and message.finish_reason is not None
            and (message.kind or "reply") in CONVERSATION_KINDS
            and message.text
        ):
            replies.setdefault(message.reply_to, []).append(message.id)
    chosen = doc.thread.metadata.chosen_replies or {}
    numbers: dict[str, tuple[int, int, bool]] = {}
    for asked, ids in replies.items():
        if len(ids) < 2:
            continue
        pick = chosen.get(asked) if chosen.get(asked) in ids else ids[-1]
        for n, reply_id in enumerate(ids, start=1):
            numbers[reply_id] = (n, len(ids), reply_id == pick)
    return numbers


def _receipt_lines(raw: Mapping[str, Any] | None, lang: str) -> list[str]:
    receipt = receipt_of({RECEIPT: raw}) if raw is not None else None
    return [] if receipt is None else [f"*{_inline(receipt.summary(lang))}*", ""]


def _inline(text: str) -> str:
    return _INLINE.sub(r"\\\1", " ".join(text.split()))


def _quote(text: str, literal: bool) -> str:
    lines = _LINE_BREAK.split(text)
    if literal:
        lines = [_literal(line) for line in lines]
    return "\n".join(f"> {line}" if line.strip() else ">" for line in lines)


def _literal(line: str) -> str:
    # Backslashes first, so that no escape added here can be undone by one of the user's.
    line = line.replace("\\", "\\\\").replace("<", "\\<").replace("&", "\\&")
    return _BLOCK_START.sub(r"\1\\\2", line)


# ---- times


def _parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> str:
    return _format_time(datetime.now(UTC))


def _when(value: str) -> str:
    try:
        return _parse_time(value).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return _inline(value)


# ---- commands


@asynccontextmanager
async def _open_store(settings: Settings) -> AsyncIterator[ChatDataLayer]:
    async with migrated(settings.database) as database:
        yield ChatDataLayer(database, FileStore(settings.data_dir / "files"))


async def _threads(args: argparse.Namespace, settings: Settings) -> str:
    async with _open_store(settings) as store:
        user = await _user(store, args.user, create_local=False)
        if user is None:
            return f"(no threads for {args.user})"
        page = await store.list_threads(
            Pagination(first=args.limit), ThreadFilter(userId=user.id, search=args.search)
        )
        rows = []
        for listed in page.data:
            thread = await store.get_thread(listed["id"])
            count = len(conversation_steps(thread)) if thread is not None else 0
            rows.append(
                (listed["id"], _when(listed["createdAt"]), str(count), _printable(listed["name"]))
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
    try:
        text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text("utf-8")
    except UnicodeDecodeError:
        raise InvalidDocument(f"{args.file} is not UTF-8 text") from None
    except OSError as exc:
        raise TransferError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    document = load_document(text)
    async with _open_store(settings) as store:
        thread_id = await import_thread(store, document, args.user)
    return f"Imported as thread {thread_id}: open /thread/{thread_id}"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
