"""One chat's live state, as one object under one `user_session` key.

A `ChatSession` holds what the next reply is made from (the sliders, the model's memory,
the branch of the conversation this tab stands on) and what the settings panel shows (the
preset, the comparison sets), plus why some backends are not offered to this chat. It is
made new when a chat starts, rebuilt from the thread when one is resumed, and written into
the thread's metadata by `save_session` — or, with the user's message in the same write,
by `store_message` — from `ChatSession.metadata()`, the one place that makes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import chainlit as cl
from chainlit.context import ChainlitContextException
from chainlit.types import ThreadDict
from chainlit.user import PersistedUser
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from chatllm.backends import ProfileSpec
from chatllm.config import Settings
from chatllm.conversation.memory import history_from_steps
from chatllm.errors import ChatLLMError, describe
from chatllm.sampling import Sampling
from chatllm.store import ChatDataLayer
from chatllm.store.tree import served_tree

#: The user-session key; under chatllm.store.thread_rows.SESSION_ONLY_PREFIX, so Chainlit's
#: copy of the user session into thread metadata leaves it out (`save_session` writes it).
KEY = "chatllm.session"

CUSTOM = "custom"  # the preset shown when the sliders match none
DEFAULT_COMPARE_WITH = ("builtin:code", "builtin:creative")


@dataclass
class ChatSession:
    """The state of one chat, for one user, in one browser tab."""

    sampling: Sampling
    #: the backend and model this chat talks to (a new chat for another)
    profile: ProfileSpec
    #: the model's memory: the path on screen, from the root to `leaf`
    history: list[BaseMessage] = field(default_factory=list)
    #: the message this tab's conversation ends on (the next message follows it)
    leaf: str | None = None
    #: the preset the sliders were last set from, or CUSTOM
    preset: str = CUSTOM
    #: preset keys a comparison runs beside the sliders
    compare_with: list[str] = field(default_factory=lambda: list(DEFAULT_COMPARE_WITH))
    #: why some backends are not offered in this chat (told once, when it starts)
    problems: list[ChatLLMError] = field(default_factory=list)
    #: the panel's values as last sent, and as last known in the page (edits, previews)
    panel_sent: dict[str, Any] = field(default_factory=dict)
    panel_shown: dict[str, Any] = field(default_factory=dict)
    #: the replies whose buttons this page has been sent (it keeps them across paths)
    buttons: set[str] = field(default_factory=set)

    @classmethod
    def new(cls, settings: Settings, default: ProfileSpec | None = None) -> ChatSession:
        """A new chat's session: the default sliders, this chat's profile (or `default`
        when the chat names none)."""
        return cls(
            Sampling(system_prompt=settings.system_prompt), current_profile(settings, default)
        )

    @classmethod
    def from_thread(
        cls, thread: ThreadDict, settings: Settings, default: ProfileSpec | None = None
    ) -> ChatSession:
        """The session a resumed thread left: its sliders (the defaults where a stored
        value no longer validates), preset, comparison sets, and the branch it stands on
        with its memory (the thread as the store serves it: the path to its leaf)."""
        metadata = thread.get("metadata") or {}
        saved = dict(metadata.get("chat_settings") or {})
        compare_with = saved.get("compare_with")
        defaults = cls.new(settings, default)
        return cls(
            sampling=defaults.sampling.restore(
                {k: v for k, v in saved.items() if k in Sampling.model_fields}
            ),
            profile=defaults.profile,
            history=history_from_steps(thread.get("steps") or []),
            leaf=served_tree(thread).leaf,
            preset=saved.get("preset") or CUSTOM,
            compare_with=list(compare_with) if isinstance(compare_with, list) else [],
        )

    def remember(self, question: str, answer: str) -> None:
        """A finished (or stopped) reply joins the model's memory."""
        self.history.extend([HumanMessage(question), AIMessage(answer)])

    def metadata(self) -> dict[str, Any]:
        """What the thread's metadata keeps of this session."""
        metadata: dict[str, Any] = {
            "chat_settings": {
                **self.sampling.as_settings(),
                "preset": self.preset,
                "compare_with": list(self.compare_with),
            },
            "chat_profile": self.profile.name,
        }
        return metadata


def current_session(settings: Settings) -> ChatSession:
    """This chat's session (a new one if the chat has none yet)."""
    session = cl.user_session.get(KEY)
    if not isinstance(session, ChatSession):
        session = set_session(ChatSession.new(settings))
    return session


def set_session(session: ChatSession) -> ChatSession:
    cl.user_session.set(KEY, session)
    return session


async def save_session(store: ChatDataLayer, session: ChatSession) -> None:
    """Write the session into its thread's metadata now, not only when the tab closes."""
    await store.save_thread_metadata(cl.context.session.thread_id, session.metadata())


def current_lang() -> str:
    """The browser's language for this chat ("en" where there is none, as over HTTP)."""
    try:
        session = cl.context.session
    except ChainlitContextException:
        return "en"
    return getattr(session, "language", None) or "en"


def user_id() -> str | None:
    """The signed-in user's id in the database, if there is one."""
    user = cl.user_session.get("user")
    return getattr(user, "id", None) if isinstance(user, PersistedUser) else None


async def show_error(exc: BaseException, lang: str) -> None:
    """`exc` in plain words, as an error message in the chat."""
    await cl.ErrorMessage(content=describe(exc, lang), author="chatllm").send()


def current_profile(settings: Settings, default: ProfileSpec | None = None) -> ProfileSpec:
    """The chat profile (backend and model) this chat was started with; when it names
    none (a client that sends no profile), `default`, else the local model."""
    name = cl.user_session.get("chat_profile")
    if name:
        return ProfileSpec.parse(name)
    return default or ProfileSpec("local", settings.local_model_name)


async def reload_thread_list(new_thread_id: str) -> None:
    """Have the page list the new thread in its sidebar now, not after a reload.

    Chainlit's page (2.12) reloads its thread list whenever the value it keeps for a chat's
    first interaction changes; a `first_interaction` event sets it (and the chat's thread
    id, given here unchanged). No other event reloads the list."""
    await cl.context.emitter.emit(
        "first_interaction",
        {"interaction": f"import {new_thread_id}", "thread_id": cl.context.session.thread_id},
    )
