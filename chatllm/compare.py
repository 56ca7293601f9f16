"""One message under several settings side by side, and word-level diffs between replies."""

from __future__ import annotations

import asyncio
import difflib
import re
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import BaseMessage

from chatllm.backends import Backend
from chatllm.errors import ChatLLMError
from chatllm.generation import Generation
from chatllm.i18n import CJK, t
from chatllm.presets import MAX_SETS, MIN_SETS
from chatllm.receipts import Receipt
from chatllm.sampling import Sampling

# One CJK character (Chinese has no spaces between words), a word, a run of whitespace, or
# any other single character (punctuation).
_TOKEN = re.compile(f"[{CJK}]|[^\\W{CJK}]+|\\s+|.", re.DOTALL)


def words(text: str) -> list[str]:
    """`text` split into diffable pieces that join back into it exactly."""
    return _TOKEN.findall(text)


def word_diff(a: str, b: str) -> list[tuple[str, str]]:
    """The edits from `a` to `b` as ("=" | "-" | "+", text) pieces, adjacent ones merged."""
    left, right = words(a), words(b)
    matcher = difflib.SequenceMatcher(a=left, b=right, autojunk=False)
    pieces: list[tuple[str, str]] = []

    def add(op: str, parts: Sequence[str]) -> None:
        chunk = "".join(parts)
        if not chunk:
            return
        if pieces and pieces[-1][0] == op:
            pieces[-1] = (op, pieces[-1][1] + chunk)
        else:
            pieces.append((op, chunk))

    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            add("=", left[i1:i2])
        else:
            add("-", left[i1:i2])
            add("+", right[j1:j2])
    return pieces


def similarity(a: str, b: str) -> float:
    """The share of words the two texts have in common, 0–1."""
    return difflib.SequenceMatcher(a=words(a), b=words(b), autojunk=False).ratio()


@dataclass(frozen=True)
class SettingsSet:
    """One column of a comparison: a label (a preset's name, or "current settings") and
    the sampling values it runs with."""

    label: str
    sampling: Sampling


@dataclass
class Column:
    label: str
    generation: Generation
    error: str | None = None
    #: whether its turn came (a comparison stopped midway leaves the later ones unrun)
    begun: bool = False

    def as_dict(self) -> dict[str, Any]:
        if not self.begun:  # no receipt: nothing ran, nothing was counted
            return {"label": self.label, "text": "", "receipt": None, "error": None, "ran": False}
        return {
            "label": self.label,
            "text": self.generation.text,
            "receipt": self.generation.receipt().model_dump(mode="json"),
            "error": self.error,
        }


def check_sets(sets: Sequence[SettingsSet]) -> None:
    if not MIN_SETS <= len(sets) <= MAX_SETS:
        raise ChatLLMError(
            f"a comparison needs {MIN_SETS} to {MAX_SETS} settings sets, not {len(sets)}"
        )


async def run_comparison(
    backend: Backend,
    model: str,
    sets: Sequence[SettingsSet],
    history: Sequence[BaseMessage],
    message: str,
    *,
    parallel: bool,
    progress: Callable[[list[Column]], Awaitable[None]] | None = None,
    describe: Callable[[BaseException], str] = str,
) -> list[Column]:
    """Run `message` under each settings set on one model: in turn, or all at once for a
    backend that serves requests in parallel. `progress` hears the columns as text arrives.

    A set that fails keeps its error in its column and the others go on.
    """
    check_sets(sets)
    columns = [Column(s.label, Generation(backend, model, s.sampling)) for s in sets]

    async def run(column: Column) -> None:
        column.begun = True
        try:
            async with aclosing(column.generation.stream(history, message)) as texts:
                async for _ in texts:
                    if progress is not None:
                        await progress(columns)
        except ChatLLMError as exc:
            column.error = describe(exc)

    if progress is not None:  # the columns, before any text: a Stop keeps them all
        await progress(columns)
    if parallel:
        await asyncio.gather(*(run(column) for column in columns))
    else:
        for column in columns:
            await run(column)
    if progress is not None:
        await progress(columns)
    return columns


def comparison_view(
    prompt: str, replies: Sequence[dict[str, Any]], lang: str | None, *, done: bool = True
) -> dict[str, Any]:
    """Props for the `Compare` custom element (public/elements/Compare.jsx): the replies
    with their receipts' summaries, and the word diff of every pair."""
    columns = []
    for reply in replies:
        receipt = Receipt.model_validate(reply["receipt"]) if reply.get("receipt") else None
        columns.append(
            {
                "label": reply["label"],
                "text": reply.get("text") or "",
                "summary": receipt.summary(lang)
                if receipt
                else t("compare.not_run", lang)
                if reply.get("ran") is False
                else "",
                "error": reply.get("error"),
            }
        )
    diffs: dict[str, list[tuple[str, str]]] = {}
    similar: dict[str, float] = {}
    if done:
        for i, left in enumerate(columns):
            for j, right in enumerate(columns):
                if i < j:
                    diffs[f"{i}-{j}"] = word_diff(left["text"], right["text"])
                    similar[f"{i}-{j}"] = round(similarity(left["text"], right["text"]), 3)
    return {
        "prompt": prompt,
        "columns": columns,
        "diffs": diffs,
        "similarity": similar,
        "done": done,
        "labels": {
            "title": t("compare.title", lang),
            "diff": t("compare.diff", lang),
            "running": t("compare.running", lang),
            "same": t("compare.same", lang),
            "similarity": t("compare.similarity", lang),
        },
    }
