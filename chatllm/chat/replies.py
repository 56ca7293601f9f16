"""A reply streamed into the chat and stored with its receipt; the buttons under it
(replay with the same seed, regenerate, fork) and what replay and regenerate do (fork,
and the branches a regenerate makes: chatllm.chat.branches)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import aclosing

import chainlit as cl
from chainlit.element import Element
from chainlit.step import StepDict
from chainlit.types import ThreadDict
from langchain_core.messages import BaseMessage

from chatllm.backends import Backends, queue_listener
from chatllm.chat.session import ChatSession, current_lang, show_error
from chatllm.compare import comparison_view
from chatllm.conversation.marks import (
    CONVERSATION_KINDS,
    REPLAY_OF,
    is_conversation_reply,
    replies_by_message,
    reply_metadata,
)
from chatllm.conversation.memory import history_from_steps
from chatllm.errors import ChatLLMError, StoreError
from chatllm.generation import Generation
from chatllm.i18n import one_line, t
from chatllm.receipts import Receipt, receipt_of
from chatllm.sampling import Sampling
from chatllm.store import ChatDataLayer
from chatllm.store.db import storable
from chatllm.store.tree import Placement, served_tree
from chatllm.xray.records import TokenRecords

log = logging.getLogger("chatllm")

#: The buttons under a reply, by action name, with their icons (lucide names).
REPLY_ACTIONS = {
    "replay": "repeat",
    "regenerate": "refresh-cw",
    "fork": "git-fork",
    "xray": "scan-eye",
}


def reply_action(name: str, step_id: str, lang: str) -> cl.Action:
    return cl.Action(
        # One id per button and reply, so a button sent again replaces itself (below).
        id=f"{name}:{step_id}",
        name=name,
        payload={"step": step_id},
        label=t(f"action.{name}", lang),
        tooltip=t(f"action.{name}.help", lang),
        icon=REPLY_ACTIONS[name],
    )


def reply_actions(step_id: str, lang: str) -> list[cl.Action]:
    """The buttons under a reply: replay it, regenerate it, fork the conversation there,
    open its X-ray."""
    return [reply_action(name, step_id, lang) for name in REPLY_ACTIONS]


async def send_reply_actions(
    steps: Sequence[StepDict], lang: str, session: ChatSession, *, again: bool = True
) -> None:
    """Every reply's buttons (Chainlit does not store actions), remembered in the session
    as the page's. The page adds each button it is sent, even one it shows already: a chat
    resumed twice in one page (its socket reconnecting sends `connection_successful`
    again, which resumes the thread again) showed every button twice. So on a resume
    (`again`) each is withdrawn first, by its id (the page ignores the withdrawal of a
    button it does not show); on a path shown afresh only replies whose buttons the page
    has not had are sent (it keeps buttons across paths: a long path's hundreds of
    buttons sent again made each switch slow)."""
    for step in steps:
        if not is_conversation_reply(step) or (not again and step["id"] in session.buttons):
            continue
        for action in reply_actions(step["id"], lang):
            if again:
                await action.remove()
            await action.send(for_id=step["id"])
        session.buttons.add(step["id"])


def receipt_element(receipt: Receipt, lang: str, title: str | None) -> cl.CustomElement:
    return cl.CustomElement(name="Receipt", props=receipt.view(lang, title), display="inline")


class QueueNotice:
    """A chat message saying how many requests wait ahead; removed once generation starts."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self.message: cl.Message | None = None

    async def show(self, ahead: int) -> None:
        if ahead <= 0:
            await self.clear()
            return
        text = t("queue.waiting", self.lang, ahead=ahead)
        if self.message is None:
            self.message = cl.Message(content=text, author="chatllm")
            await self.message.send()
        else:
            self.message.content = text
            await self.message.update()

    async def clear(self) -> None:
        if self.message is not None:
            message, self.message = self.message, None
            await message.remove()


async def send_and_save(
    store: ChatDataLayer,
    message: cl.Message,
    *elements: Element,
    place: Placement | None = None,
    tokens: TokenRecords | None = None,
) -> None:
    """Show a message with `elements` under it, and store them once, awaited (Chainlit
    would write the message again, in a task nobody awaits)."""
    message.persisted = True
    await message.send()
    await save_message(store, message, *elements, place=place, tokens=tokens)


async def save_message(
    store: ChatDataLayer,
    message: cl.Message,
    *elements: Element,
    place: Placement | None = None,
    tokens: TokenRecords | None = None,
) -> None:
    """Store a sent message and show `elements` under it, in one write the caller waits
    for (the elements are sent unpersisted: Chainlit's own writes are unawaited tasks),
    with its token records (the X-ray's), placed in the conversation by `place` (else by
    its kind). A failed write is shown to the user."""
    packed = tokens.pack() if tokens is not None else None
    try:
        for element in elements:
            await element.send(for_id=message.id, persist=False)
        try:
            await store.save_message(
                message.to_dict(), elements=elements, place=place, tokens=packed
            )
        except StoreError:
            if not elements and packed is None:
                raise
            # The words at least, without what could not be stored with them; the user
            # is told either way.
            await store.save_message(message.to_dict(), place=place)
            raise
    except StoreError as exc:
        lang = current_lang()
        text = t("error.store.shown", lang, detail=str(exc))
        await cl.ErrorMessage(content=text, author="chatllm").send()
    except ChatLLMError as exc:
        await show_error(exc, current_lang())


async def store_message(store: ChatDataLayer, session: ChatSession, message: cl.Message) -> bool:
    """The user's words (and the session) safe on disk before the model runs, following
    the message this tab stands on (the thread's active leaf from then on); False, and the
    user told, if they could not be saved."""
    try:
        # One write: the message, its place and the session (the sliders) together.
        await store.save_message(
            message.to_dict(), thread_metadata=session.metadata(), place=Placement(session.leaf)
        )
    except ChatLLMError as exc:
        await show_error(exc, current_lang())
        return False
    session.leaf = message.id
    return True


async def thread_path(store: ChatDataLayer, leaf: str | None) -> ThreadDict:
    """This chat's thread as the path to `leaf` shows it (the active path if `leaf` is not
    one of its messages)."""
    thread = await store.thread_path(cl.context.session.thread_id, leaf)
    if thread is None:
        raise ChatLLMError("this conversation is not saved yet")
    return thread


class Replies:
    """Replies in a chat: a turn's, and those the buttons under a reply make."""

    def __init__(self, backends: Backends, store: ChatDataLayer) -> None:
        self.backends = backends
        self.store = store

    async def stream(
        self,
        session: ChatSession,
        sampling: Sampling,
        history: Sequence[BaseMessage],
        text: str,
        reply_to: str,
        kind: str,
        *,
        title: str | None = None,
    ) -> cl.Message | None:
        """Stream one reply to `text` into the chat and store it with its receipt; the
        stored reply, or None if nothing was written (the error has been shown). Whatever
        was written is kept, of a stopped or failed reply too; a chat turn's ("reply")
        joins the session's memory, before a Stop's cancellation goes on."""
        lang = current_lang()
        reply = cl.Message(content="")
        notice = QueueNotice(lang)
        listening = queue_listener.set(notice.show)
        generation: Generation | None = None
        try:
            spec = session.profile
            generation = Generation(self.backends.get(spec.backend), spec.model, sampling)
            # Closed at once on Stop (the task is cancelled while it sends a token): the
            # model stops, and the reply's receipt says it was cancelled.
            async with aclosing(generation.stream(history, text)) as tokens:
                async for token in tokens:
                    await reply.stream_token(token)
        except ChatLLMError as exc:
            await show_error(exc, lang)
        except Exception as exc:
            log.exception("Reply failed")
            await show_error(exc, lang)
        finally:
            queue_listener.reset(listening)
            await notice.clear()
            if generation is not None and reply.content:
                if kind == "reply":
                    session.remember(text, reply.content)
                if kind in CONVERSATION_KINDS:  # the tab goes on from it (a Stop too)
                    session.leaf = reply.id
                receipt = generation.receipt()
                reply.metadata = reply_metadata(receipt, reply_to, kind)
                reply.actions = reply_actions(reply.id, lang)
                session.buttons.add(reply.id)
                await send_and_save(
                    self.store,
                    reply,
                    receipt_element(receipt, lang, title),
                    tokens=generation.token_records(),
                )
        return reply if reply.content else None

    async def _find_reply(self, step_id: str) -> tuple[ThreadDict, StepDict, StepDict]:
        """The path through a reply (on whichever branch it is), the reply, and the user
        message it answers."""
        thread = await thread_path(self.store, step_id)
        messages, replies = replies_by_message(thread.get("steps") or [])
        for message in messages:
            for step in replies.get(message["id"], []):
                if step["id"] == step_id:
                    return thread, step, message
        raise ChatLLMError("that reply is no longer in this conversation")

    async def replay(self, session: ChatSession, action: cl.Action) -> None:
        """Re-run a reply with its recorded seed, settings, model and history, and say
        whether the text came out the same."""
        lang = current_lang()
        try:
            path, target, message = await self._find_reply(str(action.payload.get("step")))
            receipt = receipt_of(target.get("metadata"))
            if receipt is None:
                raise ChatLLMError(t("replay.no_receipt", lang))
            try:
                sampling = Sampling.model_validate(receipt.sampling)
            except ValueError as exc:
                raise ChatLLMError(t("replay.no_receipt", lang)) from exc
            history = history_from_steps(path.get("steps") or [], before=message["id"])
            backend = self.backends.get(receipt.backend)
        except ChatLLMError as exc:
            await show_error(exc, lang)
            return
        question = message.get("output") or ""
        original = target.get("output") or ""
        # A reply stopped by its user is replayed as far as it went, not on to max tokens.
        until = len(original) if receipt.finish_reason == "cancelled" else None
        generation = Generation(backend, receipt.model, sampling)
        result = cl.Message(content="", author="chatllm")
        await result.stream_token(t("replay.running", lang, seed=sampling.seed) + "\n\n")
        failed: ChatLLMError | None = None
        try:
            async with aclosing(generation.stream(history, question)) as tokens:
                async for token in tokens:
                    await result.stream_token(token)
                    if until is not None and len(generation.text) >= until:
                        break
        except ChatLLMError as exc:
            failed = exc
        finally:
            # Also on Stop (this task cancelled): what was replayed is kept, and said so.
            if failed is not None and not generation.text:
                await result.remove()
                await show_error(failed, lang)
            else:
                await self._replayed(generation, receipt, target, message, result, lang, until)
                if failed is not None:
                    await show_error(failed, lang)

    async def _replayed(
        self,
        generation: Generation,
        receipt: Receipt,
        target: StepDict,
        message: StepDict,
        result: cl.Message,
        lang: str,
        until: int | None,
    ) -> None:
        """The replay's verdict, its text, receipt and (where it differs) a word diff,
        shown and stored in place of the streamed replay."""
        again = generation.receipt()
        original = target.get("output") or ""
        seed = generation.sampling.seed
        # As stored: a NUL the model wrote is kept as U+FFFD (chatllm.store.db.storable).
        text = storable(generation.text)
        if until is not None:  # the original was stopped: as far as it went
            same = text[:until] == original
            verdict = t("replay.same_stopped" if same else "replay.differs", lang, seed=seed)
        elif generation.finish == "cancelled":  # this replay was stopped
            same = original.startswith(text)
            verdict = t("replay.stopped", lang, seed=seed)
        else:
            same = text == original
            verdict = t("replay.same" if same else "replay.differs", lang, seed=seed)
        if again.prompt_digest != receipt.prompt_digest:
            verdict += " " + t("replay.prompt_changed", lang)
        elements: list[Element] = [receipt_element(again, lang, None)]
        if not same:
            view = comparison_view(
                message.get("output") or "",
                [
                    {
                        "label": t("replay.original", lang),
                        "text": original,
                        "receipt": receipt.model_dump(),
                    },
                    {
                        "label": t("replay.replayed", lang),
                        "text": generation.text,
                        "receipt": again.model_dump(),
                    },
                ],
                lang,
            )
            elements.append(cl.CustomElement(name="Compare", props=view, display="inline"))
        result.content = f"**{verdict}**\n\n{generation.text}"
        result.metadata = {
            **reply_metadata(again, message["id"], "replay"),
            REPLAY_OF: target["id"],
            "identical": same,
        }
        # Shown after the reply it checked, on that reply's branch.
        await send_and_save(self.store, result, *elements, place=Placement.attached(target["id"]))

    async def regenerate(self, session: ChatSession, action: cl.Action) -> None:
        """Answer a message again with the current settings: the new reply stands beside
        the one it replaces (‹ n/m › between them) and the conversation goes on from it;
        the earlier reply and what followed it stay, a switch away. Nothing moves until
        the new reply is stored."""
        lang = current_lang()
        try:
            path, target, message = await self._find_reply(str(action.payload.get("step")))
        except ChatLLMError as exc:
            await show_error(exc, lang)
            return
        history = history_from_steps(path.get("steps") or [], before=message["id"])
        number = len(served_tree(path).siblings.get(target["id"]) or [target["id"]]) + 1
        title = t(
            "variant.title", lang, number=number, prompt=one_line(message.get("output") or "", 40)
        )
        # Stored (stopped or not), it becomes the tab's leaf; the caller shows the path
        # (chatllm.chat.branches), where it stands in place of the reply it replaces.
        await self.stream(
            session,
            session.sampling,
            history,
            message.get("output") or "",
            message["id"],
            "variant",
            title=title,
        )
