"""Chainlit hooks, and nothing else: each one hands over to chatllm."""

from typing import Any

import chainlit as cl
from chainlit.config import config as chainlit_config
from chainlit.server import app as server
from chainlit.types import ThreadDict

from chatllm.auth import AuthMode
from chatllm.chat import ChatApp
from chatllm.chat.panel import DELETE_PRESET, DELETE_PRESET_CONFIRMED, KEEP_PRESET
from chatllm.chat.sharing import STOP_SHARING
from chatllm.loop import use_native_tasks
from chatllm.share import Sharing
from chatllm.store import ChatDataLayer
from chatllm.web import (
    SessionGuard,
    element_files,
    guard,
    mount,
    owner_checks,
    session_files,
    sessions,
    shared_threads,
    socket_events,
    socket_limit,
)

use_native_tasks()  # before the server's loop starts (chatllm/loop.py)
chat = ChatApp.from_environment(host=chainlit_config.run.host)
session_files(chat.settings.data_dir)
socket_limit(chat.settings.max_message_chars)
socket_events()

sharing = chat.settings.sharing
chainlit_config.features.allow_thread_sharing = sharing is not Sharing.OFF  # its Share button
mount(server, element_files(chat.store, sharing))
mount(server, owner_checks(chat.store))
mount(server, shared_threads(chat.store, sharing, chat.shared_page))
mount(server, sessions(chat.users, chat.passwords, chat.throttle))
server.add_middleware(SessionGuard, users=chat.users, local_user=chat.local_user)
guard(
    server,
    allowed=chat.settings.allowed_origins,
    loopback_only=lambda: chat.local_user() is not None,
)

if chat.auth_mode is AuthMode.PASSWORD:
    cl.password_auth_callback(chat.login)
else:
    cl.header_auth_callback(chat.local_login)


@cl.on_app_startup
async def on_app_startup() -> None:
    await chat.started()


@cl.data_layer
def data_layer() -> ChatDataLayer:
    return chat.data_layer()


@cl.set_chat_profiles
async def chat_profiles(user: cl.User | None, language: str | None = None) -> list[cl.ChatProfile]:
    return await chat.profiles(user, language)


@cl.on_shared_thread_view
async def on_shared_thread_view(thread: ThreadDict, viewer: cl.User | None) -> bool:
    return chat.may_view_shared(thread, viewer)


@cl.on_chat_start
async def on_chat_start() -> None:
    await chat.start()


@cl.on_chat_resume
async def on_chat_resume(thread: ThreadDict) -> None:
    await chat.resume(thread)


@cl.on_settings_update
async def on_settings_update(values: dict[str, Any]) -> None:
    await chat.update_settings(values)


@cl.on_message
async def on_message(message: cl.Message) -> None:
    await chat.answer(message)


@cl.action_callback("replay")
async def on_replay(action: cl.Action) -> None:
    await chat.replay(action)


@cl.action_callback("regenerate")
async def on_regenerate(action: cl.Action) -> None:
    await chat.regenerate(action)


@cl.action_callback("choose")
async def on_choose(action: cl.Action) -> None:
    await chat.choose(action)


@cl.action_callback(DELETE_PRESET)
async def on_delete_preset(action: cl.Action) -> None:
    await chat.ask_to_delete_preset(action)


@cl.action_callback(DELETE_PRESET_CONFIRMED)
async def on_delete_preset_confirmed(action: cl.Action) -> None:
    await chat.delete_preset(action)


@cl.action_callback(KEEP_PRESET)
async def on_keep_preset(action: cl.Action) -> None:
    await chat.keep_preset(action)


@cl.action_callback(STOP_SHARING)
async def on_stop_sharing(action: cl.Action) -> None:
    await chat.stop_sharing(action)
