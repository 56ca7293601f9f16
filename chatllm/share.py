"""Read-only share links: who may open a shared thread, what its link shows, the link and
its QR code, and the page a viewer without an account gets.

A thread is shared while its metadata says `is_shared` (Chainlit's own flag, which its
share dialog sets and clears). Its link, `/share/<thread id>`, shows the thread read-only:

- `Sharing.OFF`: no thread can be shared; no link works.
- `Sharing.USERS` (the default): anyone signed in to this install may open a shared
  thread's link, in Chainlit's own read-only view (messages, receipts, comparisons).
- `Sharing.ANYONE`: also people with no account: they get a page of the thread's own
  (`public_page`), with no login, no socket and nothing else of the app.

What a viewer gets is the conversation alone: its messages and their elements, the
metadata reduced to the sharing flags; never the settings (the system prompt is cut out of
the receipts too), the session, the owner's feedback, nor the messages that served the
author's session (the Export command's message and its files, which hold the settings).
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from chatllm.clock import utc_now

#: Chainlit's metadata keys for a shared thread (its share dialog and route use them).
SHARED = "is_shared"
SHARED_AT = "shared_at"
#: Where a shared thread's link points, under the app's address (Chainlit's page route).
SHARE_PATH = "/share/"
#: A message's kind (its metadata's "kind": chatllm.conversation.marks.KIND) for
#: messages that served the author's session only (the Export command's files, the
#: Import command's question and answer): never part of a share, nor of an export.
SESSION_KINDS = frozenset({"export", "import"})
#: Keys that hold a thread's settings wherever they appear in what a viewer gets (a
#: receipt's sampling values keep the rest: they are what made the reply).
SETTINGS_KEYS = frozenset({"system_prompt", "chat_settings"})


class Sharing(StrEnum):
    OFF = "off"
    USERS = "users"
    ANYONE = "anyone"


def is_shared(thread: Mapping[str, Any] | None) -> bool:
    metadata = (thread or {}).get("metadata")
    return isinstance(metadata, Mapping) and metadata.get(SHARED) is True


def may_view(thread: Mapping[str, Any] | None, viewer: str | None, sharing: Sharing) -> bool:
    """Whether `viewer` (a signed-in user's identifier; None: nobody signed in) may open
    the thread's share link: only while it is shared, and as the operator allows."""
    if thread is None or sharing is Sharing.OFF or not is_shared(thread):
        return False
    return viewer is not None or sharing is Sharing.ANYONE


def flags(shared: bool) -> dict[str, Any]:
    """The metadata that shares the thread, or stops sharing it (None removes the key)."""
    return {SHARED: True, SHARED_AT: utc_now()} if shared else {SHARED: False, SHARED_AT: None}


def read_only(thread: Mapping[str, Any]) -> dict[str, Any]:
    """The thread as a viewer gets it: its messages and elements, and of its metadata the
    sharing flags only. Chainlit's own route removes three keys and passes on the rest
    (the session's copy, the chosen replies, whatever is added later); this keeps what is
    named. The owner's feedback on a reply stays the owner's; a message of the author's
    session (`SESSION_KINDS`), what is nested under it and its files are left out, and
    so is every element not under a message that is shown."""
    metadata = thread.get("metadata") or {}
    hidden: set[str] = set()
    steps = []
    for step in thread["steps"]:  # in order: a step comes after the one it is nested under
        kind = (step.get("metadata") or {}).get("kind")
        if kind in SESSION_KINDS or step.get("parentId") in hidden:
            hidden.add(step["id"])
            continue
        steps.append(_without_settings({k: v for k, v in step.items() if k != "feedback"}))
    shown = {step["id"] for step in steps}
    elements = [
        _without_settings(dict(element))
        for element in thread.get("elements") or []
        if element.get("forId") in shown
    ]
    return {
        "id": thread["id"],
        "name": thread.get("name"),
        "createdAt": thread.get("createdAt"),
        "userIdentifier": thread.get("userIdentifier"),
        "tags": [],
        "metadata": {k: metadata[k] for k in (SHARED, SHARED_AT) if k in metadata},
        "steps": steps,
        "elements": elements,
    }


def _without_settings(value: Any) -> Any:
    """`value` with every `SETTINGS_KEYS` key removed, however deep."""
    if isinstance(value, Mapping):
        return {k: _without_settings(v) for k, v in value.items() if k not in SETTINGS_KEYS}
    if isinstance(value, list):
        return [_without_settings(v) for v in value]
    return value


def link(base: str, thread_id: str) -> str:
    """The share link of a thread for an app reached at `base` (scheme://host[:port][/path])."""
    return f"{base.rstrip('/')}{SHARE_PATH}{thread_id}"


def qr_png(text: str, scale: int = 8) -> bytes:
    """A QR code of `text` as a PNG, made here (segno: pure Python, nothing fetched): black
    modules `scale` pixels wide on white, with the standard four-module quiet zone.
    Error correction M, so a phone reads it off a projector across a room."""
    import segno

    out = io.BytesIO()
    segno.make(text, error="m", micro=False).save(out, kind="png", scale=scale, border=4)
    return out.getvalue()


def public_page(
    document_markdown: str, title: str, lang: str, note: str, root_path: str = ""
) -> str:
    """The page a viewer with no account gets: the thread rendered from its Markdown (the
    export's, receipts and comparisons included), raw HTML in it shown as text; its icon
    under the root path the app is served under."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
    return _PAGE.format(
        icon=html.escape(root_path.rstrip("/") + "/favicon"),
        lang=html.escape(lang),
        title=html.escape(title),
        note=html.escape(note),
        body=body.render(document_markdown),
    )


_PAGE = """<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<link rel="icon" href="{icon}">
<style>
  :root {{ color-scheme: light dark; }}
  body {{ font: 16px/1.55 system-ui, -apple-system, "Noto Sans CJK TC", "Noto Sans CJK SC",
          sans-serif; max-width: 46rem; margin: 0 auto; padding: 1rem 1.25rem 3rem; }}
  header {{ font-size: .85rem; opacity: .75; border-bottom: 1px solid #8886;
            padding-bottom: .5rem; margin-bottom: 1rem; }}
  blockquote {{ margin: .5rem 0 1rem; padding: .25rem 1rem; border-left: 3px solid #8888; }}
  pre, code {{ font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .9em; }}
  pre {{ overflow-x: auto; padding: .75rem; background: #8881; border-radius: 6px; }}
  table {{ border-collapse: collapse; display: block; overflow-x: auto; }}
  th, td {{ border: 1px solid #8886; padding: .25rem .5rem; text-align: left; }}
  h1 {{ font-size: 1.5rem; }} h2 {{ font-size: 1.1rem; margin-top: 1.75rem; }}
</style>
</head>
<body>
<header role="banner">{note}</header>
<main>
{body}
</main>
</body>
</html>
"""
