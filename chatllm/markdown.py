"""A thread document rendered as Markdown to read, in the reader's language: the
conversation as its page shows it (a version-2 document's active path, saying where other
branches are), or a version-1 document's every message."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from chatllm.clock import readable_time
from chatllm.conversation.marks import (
    FINISH_REASON,
    KIND,
    REPLY_TO,
    chosen_reply,
    replies_by_message,
)
from chatllm.conversation.tree import Node, Tree
from chatllm.export import COMPARE, MessageEntry, ThreadDocument, ThreadInfo, parse_document
from chatllm.i18n import CATALOGUES, t
from chatllm.receipts import RECEIPT, receipt_of
from chatllm.sampling import Sampling

# Characters with a meaning inside a line of Markdown; escaped in names, labels, receipts.
_INLINE = re.compile(r"([\\`*_\[\]<>#|~!&])")
# A line starting like a heading, a rule, a setext underline, a list, a quote, a fence or a
# table: in the user's words it is escaped, so it stays words.
_BLOCK_START = re.compile(r"^( {0,3})([#=\-+*_>`~|])")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def to_markdown(document: object, lang: str = "en") -> str:
    """The thread as Markdown to read: its settings, then each message under a heading,
    each reply with its receipt's summary under it, a comparison as one section per reply.
    A version-2 document shows its active path, with what is attached to it, and under a
    message that has other versions, which one of how many it is; a version-1 document
    (flat) shows every message, numbering a message's replies.

    Every message is a block quote, which nothing inside it can close: a heading, a rule or
    an unclosed code fence in a message stays in it. The user's words are also escaped to
    read as written; replies keep their Markdown.
    """
    doc = parse_document(document)
    info = doc.thread
    shown = _flat(doc) if doc.version == 1 else _active_path(doc)
    about = ["chatllm"]
    if info.created_at:
        about.append(t("markdown.started", lang, when=_readable(info.created_at)))
    if doc.exported_at:
        about.append(t("markdown.exported", lang, when=_readable(doc.exported_at)))
    about.append(t("markdown.messages", lang, count=len(shown)))
    lines = [
        f"# {_inline(info.name or t('markdown.untitled', lang))}",
        "",
        f"*{_inline(' · '.join(about))}*",
    ]
    lines += ["", *_settings_lines(info, lang), "---", ""]
    for one in shown:
        lines += _message_lines(one, lang)
    return "\n".join(lines).rstrip("\n") + "\n"


class _Shown(NamedTuple):
    """A message as the Markdown shows it."""

    message: MessageEntry
    #: Version 1: its number among its message's replies, how many, and whether the
    #: conversation continues from it.
    reply: tuple[int, int, bool] | None = None
    #: Version 2: its number among its siblings (the versions of it), and how many.
    versions: tuple[int, int] | None = None


def _message_lines(shown: _Shown, lang: str) -> list[str]:
    message = shown.message
    if message.role == "user":
        lines = [f"## {_inline(t('markdown.you', lang))} · {_when(message.created_at)}", ""]
        lines += [_quote(message.text, literal=True), ""]
        return lines + _versions_lines(shown.versions, lang)
    labels = [t("markdown.assistant", lang)]
    if message.is_error:
        labels.append(t("markdown.error", lang))
    if shown.reply is not None:
        n, of, chosen = shown.reply
        labels.append(t("markdown.variant", lang, n=n, of=of))
        if chosen:
            labels.append(t("markdown.chosen", lang))
    elif message.kind == "replay":
        labels.append(t("markdown.replay", lang))
    elif message.kind == COMPARE:
        labels.append(t("markdown.compare", lang))
    heading = " · ".join([*map(_inline, labels), _when(message.created_at)])
    lines = [f"## {heading}", ""]
    if message.text or not message.compare:
        lines += [_quote(message.text, literal=False), ""]
    lines += _receipt_lines(message.receipt, lang)
    for reply in message.comparison():
        lines += [f"### {_inline(reply.label)}", ""]
        if reply.text:
            lines += [_quote(reply.text, literal=False), ""]
        if reply.error:
            lines += [f"*{_inline(t('markdown.failed', lang, error=reply.error))}*", ""]
        elif getattr(reply, "ran", None) is False:
            lines += [f"*{_inline(t('compare.not_run', lang))}*", ""]
        lines += _receipt_lines(reply.receipt, lang)
    return lines + _versions_lines(shown.versions, lang)


def _versions_lines(versions: tuple[int, int] | None, lang: str) -> list[str]:
    if versions is None:
        return []
    n, of = versions
    return [f"*{_inline(t('markdown.versions', lang, n=n, of=of))}*", ""]


def _flat(doc: ThreadDocument) -> list[_Shown]:
    """A version-1 document: every message in order, a message's replies numbered."""
    numbers = _reply_numbers(doc)
    return [_Shown(message, reply=numbers.get(message.id)) for message in doc.messages]


def _active_path(doc: ThreadDocument) -> list[_Shown]:
    """A version-2 document: what is attached before the first message, then each message
    of the path from the first to the active leaf with what is attached to it, in the
    document's order; at a message with siblings, its place among them (in the
    document's order, as the page's ‹ n/m › counts them oldest first)."""
    tree = Tree(
        Node(message.id, message.parent, seq=n)
        for n, message in enumerate(doc.messages)
        if not message.attached
    )
    leaf = tree.active_leaf(doc.thread.active_leaf, doc.thread.choices)
    path = tree.path_to(leaf) if leaf is not None else []
    by_id = {message.id: message for message in doc.messages}
    attached: dict[str | None, list[MessageEntry]] = {}
    for message in doc.messages:
        if message.attached:
            attached.setdefault(message.parent, []).append(message)
    shown = [_Shown(message) for message in attached.get(None, [])]
    for node in path:
        siblings = tree.siblings(node)
        versions = (siblings.index(node) + 1, len(siblings)) if len(siblings) > 1 else None
        shown.append(_Shown(by_id[node], versions=versions))
        shown += [_Shown(message) for message in attached.get(node, [])]
    return shown


def _settings_lines(info: ThreadInfo, lang: str) -> list[str]:
    lines: list[str] = []
    metadata = info.metadata
    if metadata.chat_profile:
        lines.append(
            f"- **{_inline(t('markdown.model', lang))}:** {_inline(metadata.chat_profile)}"
        )
    system_prompt: str | None = None
    for key, value in (metadata.chat_settings or {}).items():
        if key == "system_prompt" and isinstance(value, str):
            system_prompt = value
            continue
        label = t(key, lang) if key in Sampling.model_fields or key in _PRESET_KEYS else key
        if key in _PRESET_KEYS and value:  # preset keys, as the panel names them
            names = value if isinstance(value, list) else [value]
            value = [_preset_name(name, lang) for name in names]
        lines.append(f"- **{_inline(label)}:** {_inline(_setting(value, lang))}")
    if info.tags:
        lines.append(f"- **{_inline(t('markdown.tags', lang))}:** {_inline(', '.join(info.tags))}")
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


#: Settings that name presets by key (`builtin:creative`, `user:Mine`, `custom`).
_PRESET_KEYS = ("preset", "compare_with")


def _preset_name(key: object, lang: str) -> str:
    """A preset's name as the settings panel shows it, from its key."""
    text = str(key)
    kind, _, name = text.partition(":")
    if kind == "builtin" and f"preset.{name}" in CATALOGUES["en"]:
        return t(f"preset.{name}", lang)
    if kind == "user" and name:
        return name
    if text == "custom":
        return t("preset.custom", lang)
    return text


def _setting(value: Any, lang: str) -> str:
    if value is None or value == "":
        return t("markdown.unset", lang)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def _reply_numbers(doc: ThreadDocument) -> dict[str, tuple[int, int, bool]]:
    """For a message of a version-1 document answered more than once (regenerated): each
    reply's number, how many there are, and whether the conversation continues from it —
    decided by chatllm.conversation.marks, as the model's memory was before trees."""
    steps: list[dict[str, Any]] = [
        {
            "id": message.id,
            "type": f"{message.role}_message",
            "output": message.text,
            "metadata": {
                key: value
                for key, value in (
                    (KIND, message.kind),
                    (REPLY_TO, message.reply_to),
                    (FINISH_REASON, message.finish_reason),
                )
                if value is not None
            },
        }
        for message in doc.messages
    ]
    _, replies = replies_by_message(steps)  # type: ignore[arg-type]
    chosen = doc.thread.metadata.chosen_replies or {}
    numbers: dict[str, tuple[int, int, bool]] = {}
    for asked, variants in replies.items():
        if len(variants) < 2:
            continue
        pick = chosen_reply(asked, replies, chosen)
        for n, reply in enumerate(variants, start=1):
            numbers[reply["id"]] = (n, len(variants), reply is pick)
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


def _readable(value: str) -> str:
    """A time for people; a thread's time that is not one (unchecked on import), as written."""
    try:
        return readable_time(value)
    except ValueError:
        return value


def _when(value: str) -> str:
    """`_readable`, safe inside a line of Markdown."""
    return _inline(_readable(value))
