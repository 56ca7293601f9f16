"""What the app needs before its first page, and the chat loaded after it.

`Services` is the light part: the settings (checked), the store and its migrations, the
users and how they log in, the starters (checked), all built before the server starts. The
chat itself (`chatllm.chat.app.ChatApp`: LangChain, the backends, the openai client) takes
about 1.5 s to import; it is loaded in a thread once the server is up, and the local
engine is started before the server in a process of its own, so the first page waits for
neither (bench/startup.py). Every hook that needs the chat awaits `Services.chat()`; by
the time a browser has loaded the page and connected, it is there.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from typing import TYPE_CHECKING

import chainlit as cl
from pydantic import ValidationError

from chatllm.auth import (
    LOCAL_USER,
    AuthMode,
    Passwords,
    decide_mode,
    ensure_auth_secret,
    login_metadata,
)
from chatllm.config import Settings, get_settings
from chatllm.engine.client import start_local_engine_soon
from chatllm.errors import ConfigError
from chatllm.presets import Presets
from chatllm.starters import Starters
from chatllm.store import ChatDataLayer, Database, FileStore, migrated
from chatllm.store.logins import LoginThrottle
from chatllm.store.users import Users

if TYPE_CHECKING:
    from chatllm.chat.app import ChatApp

log = logging.getLogger("chatllm")

#: The longest the chat waits for the local model before it loads (the embedded model
#: takes about a second; a large one may take far longer).
MODEL_FIRST_SECONDS = 30.0


def _settings_or_config_error() -> Settings:
    """The settings, or a ConfigError naming each malformed variable."""
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"CHATLLM_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"Some settings are malformed: {problems}.") from exc


class Services:
    """The app's services for one process, built before its server starts."""

    def __init__(self, settings: Settings, root_path: str = "") -> None:
        if settings.local_backend:
            settings.resolve_model_path()  # a missing GGUF stops start-up, naming the setting
        elif not settings.openai_base_url:
            raise ConfigError(
                "CHATLLM_LOCAL_BACKEND is off and CHATLLM_OPENAI_BASE_URL is empty: there is no"
                " model to chat with. Set the endpoint's address, or turn the local model on."
            )
        self.settings = settings
        files = FileStore(settings.data_dir / "files", url_root=root_path)
        self.store = ChatDataLayer(Database(settings.database), files)
        self.users = Users(self.store.db, files)
        self.passwords = Passwords()
        self.throttle = LoginThrottle(
            self.store.db,
            settings.login_attempts,
            settings.login_address_attempts,
            settings.login_window,
        )
        self.presets = Presets(self.store.db)
        self.starters = Starters.load(settings.data_dir)  # a malformed file stops start-up
        self.auth_mode = AuthMode.LOCAL
        self._chat: asyncio.Task[ChatApp] | None = None
        self._engine_start: threading.Thread | None = None

    @classmethod
    def from_environment(cls, host: str, root_path: str = "") -> Services:
        """Build from the environment for serving on `host` (under `root_path`); a
        configuration that cannot work ends the process with a message saying what to
        change."""
        try:
            services = cls(_settings_or_config_error(), root_path)
            asyncio.run(services.prepare(host))
            if services.settings.local_backend:
                # Its own process loads the model meanwhile: the first page does not wait
                # for it (bench/startup.py).
                services._engine_start = start_local_engine_soon(services.settings)
        except ConfigError as exc:
            print(f"chatllm cannot start: {exc}", file=sys.stderr)
            raise SystemExit(2) from exc
        return services

    async def prepare(self, host: str) -> None:
        """Bring the database schema up to date and choose how users log in."""
        ensure_auth_secret(self.settings.data_dir)
        # A database of its own: connections belong to the event loop that opened them,
        # and this runs before the server's loop starts.
        async with migrated(self.settings.database) as database:
            users = await Users(database, self.store.files).with_passwords()
        self.auth_mode = decide_mode(host, len(users))
        # Password mode: a user is made by `python -m chatllm users add` alone, never by
        # a login or a token naming one (a removed user stays removed).
        self.store.known_users_only = self.auth_mode is AuthMode.PASSWORD
        log.info("Authentication: %s", self.auth_mode)

    # ---- the chat, loaded once the server is up

    async def started(self) -> None:
        """The server is starting, on its own event loop: the database's connections are
        opened now rather than for the first users, and the chat is loaded in a thread
        while the first pages are served."""
        await self.warm_store()
        self._loading()

    async def warm_store(self) -> None:
        """The database's connections opened now rather than for the first users."""
        try:
            await self.store.db.warm()
        except Exception:  # opened later, as users need them; their first replies wait
            log.warning("Could not open the database's connections ahead", exc_info=True)

    async def _load(self) -> ChatApp:
        began = time.perf_counter()
        chat = await asyncio.to_thread(self._build)
        chat.ready()
        log.info("The chat is loaded, in %.0f ms", (time.perf_counter() - began) * 1000)
        return chat

    def _build(self) -> ChatApp:
        if self._engine_start is not None:
            # The model first, then the chat, whose hooks start the page's chat: the model
            # is loaded by the time a person can type. Side by side on two cores (with the
            # browser loading the page too), the engine's self-check and the chat's
            # imports slowed each other down, and the page could be typed in 1.1 s before
            # the model was loaded (bench/startup.py).
            # A large model that takes longer does not hold the endpoint's profiles back
            # past MODEL_FIRST_SECONDS: the chat loads, and its replies wait for the model.
            self._engine_start.join(min(self.settings.engine_start_timeout, MODEL_FIRST_SECONDS))
        from chatllm.chat.app import ChatApp

        return ChatApp(self.settings, self)

    async def chat(self) -> ChatApp:
        """The chat, once loaded (at once after that)."""
        return await asyncio.shield(self._loading())

    def _loading(self) -> asyncio.Task[ChatApp]:
        """The chat's loading, begun by the first to ask (the server's start-up, or a hook
        before it)."""
        if self._chat is None:
            self._chat = asyncio.create_task(self._load())
        return self._chat

    # ---- who is chatting

    def local_user(self) -> str | None:
        """The user everyone is in local mode; None in password mode."""
        return LOCAL_USER if self.auth_mode is AuthMode.LOCAL else None

    async def local_login(self, _headers: object) -> cl.User | None:
        """Local mode: everyone reaching the loopback address is the one local user."""
        if self.auth_mode is not AuthMode.LOCAL:
            return None
        return cl.User(identifier=LOCAL_USER, display_name="Local user", metadata=login_metadata())

    async def login(self, username: str, password: str) -> cl.User | None:
        """Password mode; an unknown user takes as long to refuse as a wrong password."""
        stored = await self.users.password_hash(username)
        if await self.passwords.averify(stored, password):
            return cl.User(identifier=username, metadata=login_metadata())
        return None
