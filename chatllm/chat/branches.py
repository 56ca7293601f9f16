"""The branches of a conversation in the chat (issue 26): the switcher ‹ n/m › under a
message with siblings, a path shown afresh (the page takes it whole, as on a resume),
switching, the branch map, fork into a new conversation, and deleting a version once
the person confirms. The tree itself is chatllm.conversation's; its storage the store's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import chainlit as cl
from chainlit.chat_context import chat_context
from chainlit.types import ThreadDict
from langchain_core.messages import BaseMessage

from chatllm.chat.actions import DELETE_BRANCH, DELETE_BRANCH_CONFIRMED, KEEP_BRANCH, SWITCH_BRANCH
from chatllm.chat.panel import notice, withdraw
from chatllm.chat.replies import send_reply_actions, thread_path
from chatllm.chat.session import ChatSession, current_lang, reload_thread_list, show_error
from chatllm.clock import readable_time
from chatllm.conversation.branches import branch_map
from chatllm.conversation.memory import history_from_steps
from chatllm.conversation.tree import Node, Tree
from chatllm.errors import ChatLLMError
from chatllm.export import import_thread, thread_document
from chatllm.i18n import one_line, t
from chatllm.store import ChatDataLayer
from chatllm.store.tree import (
    TREE_DEPTH,
    TREE_PARENT,
    BranchGone,
    BranchKept,
    served_tree,
)


def switcher(node: str, siblings: Sequence[str], lang: str) -> cl.CustomElement:
    """‹ n/m › under a message that has siblings (an edited message, a regenerated
    reply): which of them this is, and the buttons to the one before and after. Its id
    is the message's, so one sent again replaces itself."""
    at = siblings.index(node)
    element = cl.CustomElement(
        name="Branches",
        display="inline",
        props={
            "at": at + 1,
            "of": len(siblings),
            "previous": siblings[at - 1] if at > 0 else None,
            "next": siblings[at + 1] if at + 1 < len(siblings) else None,
            "action": SWITCH_BRANCH,
            "delete_action": DELETE_BRANCH,
            "node": node,
            "delete_label": t("branch.delete", lang),
            "label": t("branch.label", lang, at=at + 1, of=len(siblings)),
            "previous_label": t("branch.previous", lang),
            "next_label": t("branch.next", lang),
        },
    )
    element.id = f"branches:{node}"
    return element


def with_switchers(thread: ThreadDict, lang: str) -> ThreadDict:
    """The thread with a switcher ‹ n/m › among its elements under every message of its
    path that has siblings. They travel in the thread the page takes whole (a resume, a
    switch): the page replaces its elements with the thread's, so one sent before would
    be gone. Not stored: their counts change with every new sibling."""
    for node, kin in served_tree(thread).siblings.items():
        element = switcher(node, kin, lang)
        element.for_id = node
        element.thread_id = thread["id"]
        thread["elements"] = [*(thread.get("elements") or []), element.to_dict()]
    return thread


#: The sampling values a row of the branch map shows, as the receipt abbreviates them.
MAP_SAMPLING = (("temperature", "T"), ("top_p", "top_p"), ("seed", "seed"))


async def refused_while_busy(key: str, lang: str) -> bool:
    """Whether this chat's task (a reply being written) is running: if so, the person is
    told (the catalogue's `key`), and what they asked for is not done."""
    task = cl.context.session.current_task
    if task is None or task.done():
        return False
    await cl.context.emitter.send_toast(t(key, lang), "warning")
    return True


class Branches:
    """The branches of this chat's conversation, as the page shows and changes them."""

    def __init__(self, store: ChatDataLayer) -> None:
        self.store = store

    async def before(self, message_id: str) -> tuple[str | None, list[BaseMessage]]:
        """Where a new version of the user's message `message_id` goes: the message it
        follows (None: it is a first message), and the model's memory up to there."""
        thread = await thread_path(self.store, message_id)
        path = served_tree(thread).path
        steps = thread.get("steps") or []
        if message_id not in path or not any(
            s["id"] == message_id and s.get("type") == "user_message" for s in steps
        ):
            raise ChatLLMError(t("branch.gone", current_lang()))
        at = path.index(message_id)
        return (path[at - 1] if at else None), history_from_steps(steps, before=message_id)

    async def switch(self, session: ChatSession, action: cl.Action) -> None:
        """‹ n/m ›: open the branch through the message asked for, where the person was
        under it last (else its newest messages); saved at once, and the model's memory is
        the path shown. Refused while a reply is being written."""
        lang = current_lang()
        if await refused_while_busy("branch.busy", lang):
            return
        try:
            change = await self.store.choose_branch(
                cl.context.session.thread_id, str(action.payload.get("to"))
            )
        except BranchGone:
            await show_error(ChatLLMError(t("branch.gone", lang)), lang)
            return
        except ChatLLMError as exc:
            await show_error(exc, lang)
            return
        session.leaf = change.leaf
        await self.show_path(session)

    async def fork(self, session: ChatSession, action: cl.Action) -> None:
        """A new conversation holding this one's path up to a message (new ids, receipts
        kept, where it came from in its metadata), offered with a link; this one is left
        as it is (the link is shown, not stored). Refused while a reply is being written."""
        lang = current_lang()
        if await refused_while_busy("fork.busy", lang):
            return
        step_id = str(action.payload.get("step"))
        thread_id = cl.context.session.thread_id
        try:
            path = await thread_path(self.store, step_id)
            if served_tree(path).leaf != step_id:
                raise ChatLLMError(t("branch.gone", lang))
            first = next(
                (
                    s.get("output") or ""
                    for s in path.get("steps") or []
                    if s["type"] == "user_message"
                ),
                "",
            )
            name = t("fork.name", lang, name=path.get("name") or one_line(first, 60))
            user = cl.user_session.get("user")
            new_id = await import_thread(
                self.store,
                thread_document(path, await self.store.thread_token_records(thread_id)),
                user.identifier,
                lang,
                name=name,
                origin={"thread": thread_id, "message": step_id},
            )
        except ChatLLMError as exc:
            await show_error(exc, lang)
            return
        link = cl.Message(
            content=t("fork.done", lang, url=f"{self.store.files.url_root}/thread/{new_id}"),
            author="chatllm",
        )
        link.persisted = True  # shown only: the conversation forked stays as it was
        await link.send()
        await reload_thread_list(new_id)

    async def ask_to_delete_branch(self, action: cl.Action) -> None:
        """The switcher's delete button: asked first, with how much goes (a question shown
        in this chat only, as a dialog would be)."""
        lang = current_lang()
        node = str(action.payload.get("node"))
        whole = await self.store.whole_thread(cl.context.session.thread_id)
        steps: list[Mapping[str, Any]] = list(whole["steps"]) if whole else []
        tree = Tree(
            Node(s["id"], s.get(TREE_PARENT), s.get("createdAt") or "", n)
            for n, s in enumerate(steps)
            if isinstance(depth := s.get(TREE_DEPTH), int) and depth >= 0
        )
        if node not in tree.nodes or len(tree.siblings(node)) < 2:
            await cl.context.emitter.send_toast(t("branch.gone", lang), "warning")
            return
        count = len(tree.subtree(node))
        at = tree.siblings(node).index(node) + 1
        buttons = [
            cl.Action(
                name=DELETE_BRANCH_CONFIRMED,
                payload={"node": node},
                label=t("branch.delete.yes", lang),
                icon="trash-2",
            ),
            cl.Action(name=KEEP_BRANCH, payload={}, label=t("branch.delete.no", lang)),
        ]
        await notice(t("branch.delete.confirm", lang, at=at, count=count), buttons)

    async def delete_branch(self, session: ChatSession, action: cl.Action) -> None:
        """Confirmed: that version and everything after it are deleted; the page shows the
        branch beside it. Refused while a reply is being written."""
        lang = current_lang()
        await withdraw(action)
        if await refused_while_busy("branch.busy", lang):
            return
        try:
            change = await self.store.delete_branch(
                cl.context.session.thread_id, str(action.payload.get("node"))
            )
        except (BranchGone, BranchKept):
            await cl.context.emitter.send_toast(t("branch.gone", lang), "warning")
            return
        except ChatLLMError as exc:
            await show_error(exc, lang)
            return
        session.leaf = change.leaf
        await self.show_path(session)
        await cl.context.emitter.send_toast(t("branch.deleted", lang), "success")

    async def show_map(self, session: ChatSession) -> None:
        """The branch map: every branch of this conversation on a line (where it parts
        from the others, its first words, when it last grew, its model and sampling),
        each opening with a click; shown in this chat only."""
        lang = current_lang()
        whole = await self.store.whole_thread(cl.context.session.thread_id)
        leaves = branch_map(list(whole["steps"]) if whole else [], session.leaf)
        if len(leaves) < 2:
            await notice(t("map.none", lang))
            return
        rows = [
            {
                "id": leaf.id,
                "label": leaf.label,
                "kind": t(f"map.{leaf.role}", lang),
                "depth": leaf.depth,
                "messages": t("map.messages", lang, count=leaf.messages),
                "when": readable_time(leaf.when) if leaf.when else "",
                "settings": " · ".join(
                    part
                    for part in (
                        leaf.model,
                        *(
                            f"{short} {leaf.sampling[name]}"
                            for name, short in MAP_SAMPLING
                            if leaf.sampling.get(name) is not None
                        ),
                    )
                    if part
                ),
                "current": leaf.current,
            }
            for leaf in leaves
        ]
        shown = await notice(t("map.title", lang, count=len(leaves)))
        element = cl.CustomElement(
            name="BranchMap",
            display="inline",
            props={
                "rows": rows,
                "action": SWITCH_BRANCH,
                "label": t("map.title", lang, count=len(leaves)),
                "open_label": t("map.open", lang),
                "current_label": t("map.current", lang),
            },
        )
        await element.send(for_id=shown.id, persist=False)

    async def show_path(self, session: ChatSession) -> None:
        """Show this tab's path afresh (the page takes the thread as on a resume: it stays
        on this thread and replaces its messages), with each reply's buttons and the
        switchers, and make the model's memory that path."""
        lang = current_lang()
        thread = with_switchers(await thread_path(self.store, session.leaf), lang)
        steps = thread.get("steps") or []
        session.leaf = served_tree(thread).leaf
        session.history = history_from_steps(steps)
        # The messages this session shows, as Chainlit keeps them: an edit is taken only
        # for one of them (chatllm.web.socket_events), and a switch can show messages
        # this tab has not shown before.
        known = {m.id for m in chat_context.get()}
        for step in steps:
            if step.get("type") == "user_message" and step["id"] not in known:
                chat_context.add(cl.Message.from_dict(step))
        await cl.context.emitter.resume_thread(thread)
        await send_reply_actions(steps, lang, session, again=False)
