"""Chainlit hooks, and nothing else: each one hands over to chatllm."""

from typing import Any

import chainlit as cl

from chatllm.ui import ChatApp

chat = ChatApp.from_environment()


@cl.on_app_startup
async def on_app_startup() -> None:
    await chat.startup()


@cl.set_chat_profiles
async def chat_profiles(user: cl.User | None, language: str | None = None) -> list[cl.ChatProfile]:
    return await chat.profiles(language)


@cl.on_chat_start
async def on_chat_start() -> None:
    await chat.start()


@cl.on_settings_update
async def on_settings_update(values: dict[str, Any]) -> None:
    await chat.update_settings(values)


@cl.on_message
async def on_message(message: cl.Message) -> None:
    await chat.answer(message)
