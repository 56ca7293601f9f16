"""Who is using the app: one local user on a loopback address, or password users.

- Local mode: served on a loopback address with no users defined. No login page; everyone
  who can reach the address (only this machine) is the one local user.
- Password mode: as soon as one user exists. Passwords are checked against Argon2 hashes;
  an unknown user costs the same Argon2 work as a wrong password, so timing tells nothing.
- Served elsewhere with no users: refused at start-up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import time
from enum import StrEnum
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from chatllm.errors import ChatLLMError, ConfigError

LOCAL_USER = "local"
AUTH_SECRET_ENV = "CHAINLIT_AUTH_SECRET"
AUTH_SECRET_FILE = ".auth_secret"


class AuthMode(StrEnum):
    LOCAL = "local"
    PASSWORD = "password"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def decide_mode(host: str, password_users: int) -> AuthMode:
    if password_users:
        return AuthMode.PASSWORD
    if is_loopback(host):
        return AuthMode.LOCAL
    raise ConfigError(
        f"The app would be served on {host}, which other machines can reach, and no users "
        "are defined. Add one with `python -m chatllm users add NAME`, or serve on "
        "127.0.0.1 for local use without a login."
    )


#: Token metadata: which login (so that logging out ends that session alone), and when,
#: in milliseconds (a token's own `iat` is in whole seconds, too coarse to tell a login
#: just before a password reset from one just after). "token" in the names keeps them out
#: of the stored user (chatllm.store.thread_rows.scrub).
LOGIN_ID = "login_token"
LOGIN_MS = "token_issued_ms"


def login_metadata() -> dict[str, str | int]:
    """Metadata for a new session's token."""
    return {LOGIN_ID: secrets.token_urlsafe(12), LOGIN_MS: int(time.time() * 1000)}


class LoginBusy(ChatLLMError):
    """Too many logins are being checked at once; the caller should try again shortly."""


class Passwords:
    """Argon2 hashing with equal work for unknown users and wrong passwords.

    Verifications run one at a time off the event loop, and at most `queue` wait for their
    turn (the rest are refused with LoginBusy at once): a flood of logins, which anyone can
    send, costs at most one core and never the chats'."""

    def __init__(self, queue: int = 8) -> None:
        self._hasher = PasswordHasher()
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))
        self._queue = queue
        self._waiting = 0
        self._turn: asyncio.Lock | None = None

    def hash(self, password: str) -> str:
        if not password:
            raise ValueError("a password cannot be empty")
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        try:
            matched = self._hasher.verify(stored_hash or self._decoy, password)
        except (VerificationError, InvalidHashError):
            return False
        return matched and stored_hash is not None

    async def averify(self, stored_hash: str | None, password: str) -> bool:
        """`verify` off the event loop, one at a time (Argon2 is deliberately slow)."""
        if self._waiting >= self._queue:
            raise LoginBusy("too many logins are being checked; try again in a moment")
        if self._turn is None:
            self._turn = asyncio.Lock()
        self._waiting += 1
        try:
            async with self._turn:
                return await asyncio.to_thread(self.verify, stored_hash, password)
        finally:
            self._waiting -= 1


def ensure_auth_secret(data_dir: Path) -> None:
    """Make sure Chainlit can sign its session tokens.

    CHAINLIT_AUTH_SECRET from the environment wins; otherwise a secret is generated once
    into `data_dir`, readable by its owner only, and reused on every start.
    """
    if os.environ.get(AUTH_SECRET_ENV):
        return
    path = data_dir / AUTH_SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written whole under another name, then linked into place: workers starting
        # together on one data directory all end up with the one secret that landed first,
        # and none reads a file still being written.
        partial = data_dir / f"{AUTH_SECRET_FILE}.{os.getpid()}.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secrets.token_urlsafe(48))
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(partial, path)
        except FileExistsError:
            pass
        finally:
            partial.unlink()
    secret = path.read_text(encoding="utf-8").strip()
    if len(secret) < 32:
        raise ConfigError(f"The auth secret in {path} is too short; delete the file.")
    os.environ[AUTH_SECRET_ENV] = secret
