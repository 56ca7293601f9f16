"""The thread document: a thread out as JSON (receipts included), and back in.

The JSON document describes itself:

    {"format": "chatllm.thread", "version": 3, "exported_at": …,
     "thread": {"id", "name", "created_at", "tags",
                "active_leaf": the message the conversation stands on (or null),
                "choices": {a message id, or "" for the first messages: the message
                            chosen last among those that follow it},
                "metadata": {"chat_settings", "chat_profile"}},
     "messages": [{"id", "role": "user" | "assistant", "parent", "attached", "author",
                   "text", "created_at", "is_error",
                   "extra" (any other step metadata, as stored),
                   and for replies: "kind", "reply_to", "finish_reason", "receipt",
                   "compare", "replay_of", "tokens"}, …],
     "elements": [{"name", "for": a message id, "display", "props"}, …]}

The messages are every branch of the conversation's tree, in the order they were written
(chatllm.conversation.tree): a message of the conversation (a user's message, a reply)
has "attached": false and as "parent" the message it follows (null: a first message);
another (a notice, an error, a comparison, a replay) has "attached": true and as "parent"
the message it is shown after (null: before the first). What a page shows is the path from
the first message to "active_leaf"; at a fork without a choice, the newest branch.
A reply's "tokens" (version 3) are its token records, what the sampling X-ray shows: the
store's blob (chatllm.xray.records) in base64, absent where none were recorded.
Chainlit's run and tool steps around the messages are left out, and so is a reference to a
message that is no longer there: a message whose parent is gone starts a branch of its
own, as the store shows it, and a choice naming it is dropped. Only custom elements (the
receipt and comparison views) travel; uploaded files do not.

An import becomes a new thread of the importing user, with new ids throughout and every
reference between messages (parent, active_leaf, choices, reply_to, replay_of, an
element's message) pointed at the new ones. Versions 2 (no "tokens") and 1 are still
read. Version 1, written before conversations were trees, has no "parent", "attached",
"active_leaf" nor "choices", and in the metadata "chosen_replies" (a user message id →
the reply the conversation continues from); the store makes of it the tree such a thread
became (chatllm.conversation.flat).

chatllm.markdown renders a document to read; `python -m chatllm export|import` and the
chat's Export and Import commands use both.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import json
import uuid
from collections.abc import Collection, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chatllm.auth import LOCAL_USER
from chatllm.clock import format_time, parse_time, utc_now
from chatllm.conversation.marks import (
    CHOSEN_REPLIES,
    FINISH_REASON,
    KIND,
    REPLAY_OF,
    REPLY_TO,
)
from chatllm.conversation.tree import ATTACHED, ROOT
from chatllm.errors import ChatLLMError, StoreError, Worded
from chatllm.i18n import t
from chatllm.receipts import RECEIPT
from chatllm.share import SESSION_KINDS
from chatllm.store import ChatDataLayer
from chatllm.store.tree import TREE_DEPTH, TREE_PARENT, TreeChange, served_tree
from chatllm.store.users import NoSuchUser
from chatllm.xray.records import TokenRecords, UnreadableRecords

if TYPE_CHECKING:  # the data layer's records; the document itself needs no UI
    from chainlit.element import ElementDict
    from chainlit.step import StepDict
    from chainlit.types import ThreadDict
    from chainlit.user import PersistedUser

FORMAT = "chatllm.thread"
VERSION = 3
#: The versions an import reads: 1 is a flat thread's, from before trees; 2 a tree's
#: without token records.
READABLE = (1, 2, 3)

COMPARE = "compare"
#: Step metadata that has a field of its own in an exported message.
REPLY_FIELDS = (KIND, REPLY_TO, FINISH_REASON, RECEIPT, COMPARE, REPLAY_OF)
#: Thread metadata worth carrying to another database; the rest is Chainlit's session copy
#: (and the tree, which has fields of its own).
THREAD_METADATA = ("chat_settings", "chat_profile")
#: Fields of version 2 only: the tree.
MESSAGE_TREE_FIELDS = ("parent", "attached")
THREAD_TREE_FIELDS = ("active_leaf", "choices")
ROLE_OF_STEP = {"user_message": "user", "assistant_message": "assistant"}
#: A fork's thread metadata: the thread and message it was forked from.
FORKED_FROM = "forked_from"

#: The times a message may carry: anything else is a damaged or made-up file.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
#: The largest export read (the chat's upload and the command alike).
MAX_DOCUMENT_MB = 50

T = TypeVar("T")


class TransferError(ChatLLMError):
    """A thread could not be exported or imported."""


class ThreadNotFound(TransferError):
    """No thread has that id."""


class InvalidDocument(TransferError):
    """The file is not a chatllm thread export this version can read."""


class NotText(Worded, InvalidDocument):
    """The file is not UTF-8 text (a picture, an archive): no export, and no use reading
    it as JSON. The same words from the command and the chat's Import."""

    key = "import.not_text"


def document_text(data: bytes, name: str) -> str:
    """The text of an export file's bytes; NotText, naming the file as `name`, if they are
    not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise NotText(name=name) from None


# ---- the document


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ThreadMetadata(_Strict):
    chat_settings: dict[str, Any] | None = None
    chat_profile: str | None = None
    #: Version 1 only: version 2 keeps the tree's choices in the thread.
    chosen_replies: dict[str, str] | None = None


class ThreadInfo(_Strict):
    id: str | None = None
    name: str | None = None
    created_at: str | None = None
    tags: list[str] = Field(default_factory=list)
    active_leaf: str | None = None
    choices: dict[str, str] = Field(default_factory=dict)
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
    #: Version 2: the message this one follows (attached: is shown after), None for the top.
    parent: str | None = None
    attached: bool = False
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
    #: Version 3: the reply's token records, base64 of chatllm.xray.records' blob.
    tokens: str | None = None
    #: Other step metadata, kept as it was.
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("tokens")
    @classmethod
    def _token_records(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                TokenRecords.unpack(base64.b64decode(value, validate=True))
            except (binascii.Error, UnreadableRecords) as exc:
                raise ValueError(f"not token records ({exc})") from None
        return value

    def token_records(self) -> bytes | None:
        return base64.b64decode(self.tokens) if self.tokens is not None else None

    @field_validator("created_at")
    @classmethod
    def _timestamp(cls, value: str) -> str:
        if not EARLIEST <= parse_time(value) < LATEST:
            raise ValueError(f"{value!r} is not a plausible time (1970 to 2200)")
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
    version: Literal[1, 2, 3]
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
    if type(version) is not int or version not in READABLE:
        raise InvalidDocument(
            f"this export has version {version!r} of the thread format; "
            f"this chatllm reads versions {', '.join(map(str, READABLE[:-1]))}"
            f" and {READABLE[-1]}"
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
    if document.version == 1:
        _check_flat(document)
    else:
        _check_tree(document)


def _check_flat(document: ThreadDocument) -> None:
    """A version-1 document has no tree: a field of one says the version is wrong (and
    would otherwise be dropped unread)."""
    for n, message in enumerate(document.messages):
        for key in MESSAGE_TREE_FIELDS:
            if key in message.model_fields_set:
                raise InvalidDocument(
                    f"messages[{n}].{key}: version 1 has no tree; a file with one is version 2"
                )
    for key in THREAD_TREE_FIELDS:
        if key in document.thread.model_fields_set:
            raise InvalidDocument(
                f"thread.{key}: version 1 has no tree; a file with one is version 2"
            )


def _check_tree(document: ThreadDocument) -> None:
    """A version-2 document's tree holds together: every message says where it stands,
    every parent is a message of the conversation (not an attached one), no parents go
    round, and the active leaf and the choices name messages of the conversation, each
    choice one that follows its fork."""
    messages = document.messages
    ids = {message.id for message in messages}
    nodes = {message.id: message.parent for message in messages if not message.attached}

    def must_be_node(where: str, message_id: str) -> None:
        if message_id not in ids:
            raise InvalidDocument(f"{where}: {message_id!r} names no message of this file")
        if message_id not in nodes:
            raise InvalidDocument(
                f"{where}: {message_id!r} is attached, not a message of the conversation"
            )

    for n, message in enumerate(messages):
        missing = [key for key in MESSAGE_TREE_FIELDS if key not in message.model_fields_set]
        if missing:
            raise InvalidDocument(
                f"messages[{n}]: version 2 needs {' and '.join(missing)} (its place in the tree)"
            )
        if message.parent is not None:
            must_be_node(f"messages[{n}].parent", message.parent)
    _depths(messages)  # refuses parents that go round
    info = document.thread
    if info.metadata.chosen_replies is not None:
        raise InvalidDocument(
            "thread.metadata.chosen_replies: version 2 keeps the choices in thread.choices"
        )
    if info.active_leaf is not None:
        must_be_node("thread.active_leaf", info.active_leaf)
    for fork, child in info.choices.items():
        if fork != ROOT:
            must_be_node("thread.choices", fork)
        must_be_node(f"thread.choices[{fork!r}]", child)
        if nodes[child] != (None if fork == ROOT else fork):
            follows = "is not a first message" if fork == ROOT else f"does not follow {fork!r}"
            raise InvalidDocument(f"thread.choices[{fork!r}]: {child!r} {follows}")


def _depths(messages: Sequence[MessageEntry]) -> dict[str, int]:
    """Each message of the conversation's depth in a version-2 document's tree (0: a
    first message); InvalidDocument if some parents go round. Parents are nodes: checked
    before."""
    parent_of = {message.id: message.parent for message in messages if not message.attached}
    where = {message.id: n for n, message in enumerate(messages)}
    depths: dict[str, int] = {}
    for start in parent_of:
        trail: list[str] = []
        on_trail: set[str] = set()
        node: str | None = start
        while node is not None and node not in depths:
            if node in on_trail:
                cycle = [*trail[trail.index(node) :], node]
                raise InvalidDocument(
                    f"messages[{where[node]}].parent: the parents go round "
                    f"({' → '.join(map(repr, cycle))})"
                )
            trail.append(node)
            on_trail.add(node)
            node = parent_of.get(node)
        depth = -1 if node is None else depths[node]
        for node in reversed(trail):
            depth += 1
            depths[node] = depth
    return depths


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "document"


# ---- export


async def export_thread(store: ChatDataLayer, thread_id: str) -> dict[str, Any]:
    """The thread as a self-describing JSON document (see the module's docstring): every
    branch, not only the one a page shows, with its replies' token records."""
    thread = await store.whole_thread(thread_id)
    if thread is None:
        raise ThreadNotFound(f"there is no thread {thread_id!r}")
    return thread_document(thread, await store.thread_token_records(thread_id))


def thread_document(
    thread: ThreadDict, tokens: Mapping[str, bytes] | None = None
) -> dict[str, Any]:
    """A thread the store read (whole, or a page's path), as the export's document, with
    `tokens`: its replies' token records by id, where it has them."""
    steps = conversation_steps(thread)
    roles = {step["id"]: ROLE_OF_STEP[step.get("type") or ""] for step in steps}
    places = _places(thread.get("steps") or [], roles)
    messages = [_exported_message(step, *places[step["id"]]) for step in steps]
    for message in messages:
        if tokens and message["role"] == "assistant" and message["id"] in tokens:
            message["tokens"] = base64.b64encode(tokens[message["id"]]).decode("ascii")
    for message in messages:
        # A reference to a message that is gone (or never was one) would point at nothing.
        for key, role in ((REPLY_TO, "user"), (REPLAY_OF, "assistant")):
            if key in message and roles.get(message[key]) != role:
                message[key] = None
    saved = thread.get("metadata") or {}
    metadata: dict[str, Any] = {key: saved[key] for key in THREAD_METADATA if key in saved}
    tree = served_tree(thread)
    follows = {message["id"]: message["parent"] for message in messages if not message["attached"]}
    return {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": utc_now(),
        "thread": {
            "id": thread["id"],
            "name": thread.get("name"),
            "created_at": thread.get("createdAt"),
            "tags": list(thread.get("tags") or []),
            "active_leaf": tree.leaf if tree.leaf in follows else None,
            # A choice whose messages are not all here would name nothing on import.
            "choices": {
                fork: child
                for fork, child in tree.choices.items()
                if child in follows and follows[child] == (None if fork == ROOT else fork)
            },
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


def _places(
    steps: Sequence[StepDict], exported: Collection[str]
) -> dict[str, tuple[str | None, bool]]:
    """Where each of the `exported` messages stands: the exported message it follows (a
    node of the tree) or is shown after (attached), and whether it is attached.

    A parent that is not exported gives way to its nearest exported ancestor, so that the
    file is still one tree. A message the store did not place (Chainlit nested it under a
    run step) is attached where the step it is nested under stands."""
    by_id: dict[str, StepDict] = {step["id"]: step for step in steps}
    follows = {step["id"]: _tree_parent(step) for step in steps if _is_node(step)}

    def exported_node(node: str | None) -> str | None:
        seen: set[str] = set()
        while node is not None and node in follows and node not in seen:
            if node in exported:
                return node
            seen.add(node)
            node = follows[node]
        return None

    def anchor(step: StepDict | None) -> str | None:
        seen: set[str] = set()
        while step is not None and step["id"] not in seen:
            seen.add(step["id"])
            if _is_node(step):
                return exported_node(step["id"])
            if step.get(TREE_DEPTH) == ATTACHED:
                return exported_node(_tree_parent(step))
            step = by_id.get(step.get("parentId") or "")
        return None

    return {
        step["id"]: (exported_node(_tree_parent(step)), False)
        if _is_node(step)
        else (anchor(step), True)
        for step in steps
        if step["id"] in exported
    }


def _tree_parent(step: Mapping[str, Any]) -> str | None:
    parent = step.get(TREE_PARENT)
    return parent if isinstance(parent, str) else None


def _is_node(step: Mapping[str, Any]) -> bool:
    depth = step.get(TREE_DEPTH)
    return isinstance(depth, int) and depth >= 0


def _exported_message(step: StepDict, parent: str | None, attached: bool) -> dict[str, Any]:
    metadata = dict(step.get("metadata") or {})
    role = ROLE_OF_STEP[step.get("type") or ""]
    message: dict[str, Any] = {
        "id": step["id"],
        "role": role,
        "parent": parent,
        "attached": attached,
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


async def import_thread(
    store: ChatDataLayer,
    document: object,
    user_identifier: str,
    lang: str | None = None,
    *,
    name: str | None = None,
    origin: Mapping[str, str] | None = None,
) -> str:
    """Add an exported thread as a new thread of `user_identifier`; returns its id. Its
    name says it is an import, in `lang` (or is `name`: a fork's); `origin` (a fork's
    thread and message) is kept in its metadata as `forked_from`.

    The document is checked through before anything is written (InvalidDocument). All or
    nothing: if a write fails, what was written of the new thread is deleted again.
    Runs outside the caller's Chainlit session, if any: the thread's owner is the user
    named here, and no write waits for that session's first message.
    """
    parsed = parse_document(document)
    return await _outside_chainlit(
        _write_thread(store, parsed, user_identifier, lang, name, origin)
    )


async def _outside_chainlit(work: Coroutine[Any, Any, T]) -> T:
    # An empty context has no Chainlit session: the data layer then writes at once and
    # takes the owner from the call instead of from the session's user.
    return await asyncio.create_task(work, context=contextvars.Context())


async def _write_thread(
    store: ChatDataLayer,
    document: ThreadDocument,
    identifier: str,
    lang: str | None,
    name: str | None = None,
    origin: Mapping[str, str] | None = None,
) -> str:
    user = await stored_user(store, identifier, create_local=True)
    if user is None:
        raise NoSuchUser(f"the user {identifier!r} could not be created")
    thread_id = str(uuid.uuid4())
    new_ids = {message.id: str(uuid.uuid4()) for message in document.messages}
    info = document.thread
    metadata: dict[str, Any] = info.metadata.model_dump(exclude_none=True)
    if CHOSEN_REPLIES in metadata:  # version 1: the store makes its tree of them
        metadata[CHOSEN_REPLIES] = {
            new_ids[asked]: new_ids[reply] for asked, reply in metadata[CHOSEN_REPLIES].items()
        }
    steps = [
        _step(message, thread_id, new_ids, created)
        for message, created in zip(document.messages, _ordered_times(document), strict=True)
    ]
    tree = None
    if document.version >= 2:
        depths = _depths(document.messages)
        steps = [
            _placed(step, message, new_ids, depths)
            for step, message in zip(steps, document.messages, strict=True)
        ]
        tree = TreeChange(
            new_ids[info.active_leaf] if info.active_leaf is not None else None,
            {
                ROOT if fork == ROOT else new_ids[fork]: new_ids[child]
                for fork, child in info.choices.items()
            },
        )
    elements: list[ElementDict] = [
        {
            "id": str(uuid.uuid4()),
            "threadId": thread_id,
            "forId": new_ids[element.for_] if element.for_ is not None else None,
            "type": "custom",
            "name": element.name,
            "mime": "application/json",
            "display": element.display,
            "props": dict(element.props),
        }
        for element in document.elements
    ]
    thread: ThreadDict = {
        "id": thread_id,
        "name": name or _imported_name(document, lang),
        "userId": user.id,
        "metadata": {**metadata, FORKED_FROM: dict(origin)} if origin else metadata,
        "tags": list(info.tags),
    }  # type: ignore[typeddict-item]
    tokens = {
        new_ids[message.id]: data
        for message in document.messages
        if (data := message.token_records()) is not None
    }
    try:
        await store.add_thread(thread, steps, elements, tree, tokens)
    except StoreError as exc:
        raise StoreError(f"{exc}; nothing was kept") from exc
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
    return {
        "id": new_ids[message.id],
        "threadId": thread_id,
        "parentId": None,
        "type": "user_message" if user else "assistant_message",
        "name": message.author or ("User" if user else "chatllm"),
        "input": "",
        "output": message.text,
        "createdAt": created,
        "start": created,
        "end": created,
        "isError": message.is_error,
        "metadata": metadata,
        "streaming": False,
        "waitForAnswer": False,
    }


def _placed(
    step: StepDict, message: MessageEntry, new_ids: Mapping[str, str], depths: Mapping[str, int]
) -> StepDict:
    """A version-2 message's step with its place in the tree, as the store takes it."""
    parent = new_ids[message.parent] if message.parent is not None else None
    depth = ATTACHED if message.attached else depths[message.id]
    return cast("StepDict", {**step, TREE_PARENT: parent, TREE_DEPTH: depth})


def _ordered_times(document: ThreadDocument) -> list[str]:
    """The messages' times in the data layer's format, never earlier than the message
    before: the thread is read back in time order, and must come back in this order."""
    times: list[str] = []
    latest = datetime.min.replace(tzinfo=UTC)
    for message in document.messages:
        latest = max(latest, parse_time(message.created_at))
        times.append(format_time(latest))
    return times


def _imported_name(document: ThreadDocument, lang: str | None) -> str:
    """The thread's name, or its first question's start, marked as an import at its start:
    the sidebar shows a long name's start only, where a mark at its end went unseen and
    the import looked like the original."""
    name = document.thread.name
    if not name:
        first = next((m.text for m in document.messages if m.role == "user"), "")
        name = " ".join(first.split())[:60] or t("markdown.untitled", lang)
    return t("import.name", lang, name=name)


async def stored_user(
    store: ChatDataLayer, identifier: str, *, create_local: bool
) -> PersistedUser | None:
    """The stored user; the local user may not be stored yet (before the first visit)."""
    user = await store.get_user(identifier)
    if user is None and identifier == LOCAL_USER:
        return await store.ensure_user(LOCAL_USER) if create_local else None
    if user is None:
        raise NoSuchUser(f"there is no user {identifier!r}")
    return user
