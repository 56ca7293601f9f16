"""Chainlit hooks, and nothing else: each one hands over to chatllm.

What the first page needs is built here, before the server starts (`Services`); the chat
itself is loaded once the server is up, and each hook that needs it waits for it
(`services.chat()`, at once after the first few seconds)."""

from typing import Any

import chainlit as cl
from chainlit.config import config as chainlit_config
from chainlit.server import app as server
from chainlit.types import ThreadDict

from chatllm.auth import AuthMode
from chatllm.chat.actions import (
    DELETE_BRANCH,
    DELETE_BRANCH_CONFIRMED,
    DELETE_PRESET,
    DELETE_PRESET_CONFIRMED,
    KEEP_BRANCH,
    KEEP_PRESET,
    STOP_SHARING,
    SWITCH_BRANCH,
)
from chatllm.chat.services import Services
from chatllm.loop import prepare_server_loop
from chatllm.share import Sharing
from chatllm.store import ChatDataLayer
from chatllm.web import (
    SessionGuard,
    element_files,
    guard,
    mount,
    offline_page,
    owner_checks,
    refused_routes,
    session_files,
    sessions,
    shared_threads,
    socket_events,
    socket_limit,
    xray_records,
)

prepare_server_loop()  # before the server's loop starts (chatllm/loop.py)
root_path = chainlit_config.run.root_path  # `chainlit run --root-path /chat`: every route under it
services = Services.from_environment(host=chainlit_config.run.host, root_path=root_path)
settings = services.settings
session_files(settings.data_dir)
socket_limit(settings.max_message_chars)


async def on_edit(message_id: str, text: str, author: str) -> None:
    await (await services.chat()).edit(message_id, text, author)


socket_events(edit=on_edit)
offline_page()


async def shared_page(thread_id: str, lang: str) -> str:
    return await (await services.chat()).shared_page(thread_id, lang)


chainlit_config.features.allow_thread_sharing = settings.sharing is not Sharing.OFF
for router in (
    element_files(services.store, settings.sharing),
    xray_records(services.store, settings.sharing),
    owner_checks(services.store),
    shared_threads(services.store, settings.sharing, shared_page),
    sessions(services.users, services.passwords, services.throttle),
    refused_routes(),
):
    mount(server, router, root_path)
server.add_middleware(
    SessionGuard, users=services.users, local_user=services.local_user, root_path=root_path
)
guard(
    server,
    allowed=settings.allowed_origins,
    loopback_only=lambda: services.local_user() is not None,
)

if services.auth_mode is AuthMode.PASSWORD:
    cl.password_auth_callback(services.login)
else:
    cl.header_auth_callback(services.local_login)


@cl.on_app_startup
async def on_app_startup() -> None:
    await services.started()


@cl.data_layer
def data_layer() -> ChatDataLayer:
    return services.store


@cl.set_chat_profiles
async def chat_profiles(user: cl.User | None, language: str | None = None) -> list[cl.ChatProfile]:
    return await (await services.chat()).profiles(user, language)


@cl.on_shared_thread_view
async def on_shared_thread_view(thread: ThreadDict, viewer: cl.User | None) -> bool:
    return (await services.chat()).may_view_shared(thread, viewer)


@cl.on_chat_start
async def on_chat_start() -> None:
    await (await services.chat()).start()


@cl.on_chat_resume
async def on_chat_resume(thread: ThreadDict) -> None:
    await (await services.chat()).resume(thread)


@cl.on_settings_update
async def on_settings_update(values: dict[str, Any]) -> None:
    await (await services.chat()).update_settings(values)


async def on_settings_edit(values: dict[str, Any]) -> None:
    await (await services.chat()).edit_settings(values)


# Not `@cl.on_settings_edit`, which runs each change as a task: the page would show a
# task starting and ending at every step of a slider's drag.
chainlit_config.code.on_settings_edit = on_settings_edit


@cl.on_message
async def on_message(message: cl.Message) -> None:
    await (await services.chat()).answer(message)


@cl.action_callback("replay")
async def on_replay(action: cl.Action) -> None:
    await (await services.chat()).replay(action)


@cl.action_callback("regenerate")
async def on_regenerate(action: cl.Action) -> None:
    await (await services.chat()).regenerate(action)


@cl.action_callback("fork")
async def on_fork(action: cl.Action) -> None:
    await (await services.chat()).fork(action)


@cl.action_callback("xray")
async def on_xray(action: cl.Action) -> None:
    await (await services.chat()).xray(action)


@cl.action_callback(DELETE_BRANCH)
async def on_delete_branch(action: cl.Action) -> None:
    await (await services.chat()).ask_to_delete_branch(action)


@cl.action_callback(DELETE_BRANCH_CONFIRMED)
async def on_delete_branch_confirmed(action: cl.Action) -> None:
    await (await services.chat()).delete_branch(action)


@cl.action_callback(KEEP_BRANCH)
async def on_keep_branch(action: cl.Action) -> None:
    await (await services.chat()).keep_preset(action)  # the question goes, nothing else


@cl.action_callback(SWITCH_BRANCH)
async def on_switch_branch(action: cl.Action) -> None:
    await (await services.chat()).switch(action)


@cl.action_callback(DELETE_PRESET)
async def on_delete_preset(action: cl.Action) -> None:
    await (await services.chat()).ask_to_delete_preset(action)


@cl.action_callback(DELETE_PRESET_CONFIRMED)
async def on_delete_preset_confirmed(action: cl.Action) -> None:
    await (await services.chat()).delete_preset(action)


@cl.action_callback(KEEP_PRESET)
async def on_keep_preset(action: cl.Action) -> None:
    await (await services.chat()).keep_preset(action)


@cl.action_callback(STOP_SHARING)
async def on_stop_sharing(action: cl.Action) -> None:
    await (await services.chat()).stop_sharing(action)
