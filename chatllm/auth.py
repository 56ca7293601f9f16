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
from enum import StrEnum
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from chatllm.errors import ConfigError

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


class Passwords:
    """Argon2 hashing with equal work for unknown users and wrong passwords."""

    def __init__(self) -> None:
        self._hasher = PasswordHasher()
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))

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
        """`verify` off the event loop: Argon2 is deliberately slow."""
        return await asyncio.to_thread(self.verify, stored_hash, password)


def ensure_auth_secret(data_dir: Path) -> None:
    """Make sure Chainlit can sign its session tokens.

    CHAINLIT_AUTH_SECRET from the environment wins; otherwise a secret is generated once
    into `data_dir`, readable by its owner only, and reused on every start.
    """
    if os.environ.get(AUTH_SECRET_ENV):
        return
    path = data_dir / AUTH_SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text(encoding="utf-8").strip()
        if len(secret) < 32:
            raise ConfigError(f"The auth secret in {path} is too short; delete the file.") from None
    else:
        secret = secrets.token_urlsafe(48)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secret)
    os.environ[AUTH_SECRET_ENV] = secret
