"""Failed logins, counted in the database so that every worker sees every try."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from chatllm.store.db import Database, writes
from chatllm.store.dialect import sql


def _digest(kind: str, value: str) -> str:
    # What was typed as a user name is sometimes a password: only its digest is kept.
    return hashlib.sha256(f"{kind}\0{value}".encode()).hexdigest()


class LoginThrottle:
    """Failed logins counted per account and per client address over a sliding window;
    past the limit, logins are refused until the oldest failure leaves the window.

    A try counts as failed from the moment it is admitted, so a hundred sent at once are
    counted as they arrive, not when their password checks end; `succeeded` takes it
    back. The counts live in the database: workers behind a load balancer share them
    (checking and counting a try is one transaction, serialized per account and address)."""

    def __init__(
        self,
        db: Database,
        account_limit: int,
        address_limit: int,
        window: float,
        clock: Callable[[], float] = time.time,  # wall time: workers compare theirs
    ) -> None:
        self.db = db
        self.limits = {"account": account_limit, "address": address_limit}
        self.window = window
        self.clock = clock

    @writes("the login could not be counted")
    async def admit(self, account: str, address: str) -> float | None:
        """None: this try may go ahead (and counts as failed until `succeeded`); else the
        seconds until a login for `account` from `address` may be tried."""
        now = self.clock()
        keys = {"account": _digest("account", account), "address": _digest("address", address)}
        async with self.db.write() as conn:
            await self.db.dialect.serialize(conn, [f"login {k} {v}" for k, v in keys.items()])
            await conn.execute(
                sql("DELETE FROM login_failures WHERE at <= :cutoff"),
                {"cutoff": now - self.window},
            )
            waits = []
            for kind, who in keys.items():
                limit = self.limits[kind]
                # The limit-th most recent failure: once it leaves the window, one more
                # try fits.
                oldest = await conn.scalar(
                    sql(
                        "SELECT at FROM login_failures WHERE kind = :kind AND who = :who"
                        " ORDER BY at DESC LIMIT 1 OFFSET :skip"
                    ),
                    {"kind": kind, "who": who, "skip": limit - 1},
                )
                if oldest is not None:
                    waits.append(float(oldest) + self.window - now)
            if waits:
                return max(waits)
            await conn.execute(
                sql("INSERT INTO login_failures (kind, who, at) VALUES (:kind, :who, :at)"),
                [{"kind": kind, "who": who, "at": now} for kind, who in keys.items()],
            )
            return None

    @writes("the login could not be counted")
    async def succeeded(self, account: str, address: str) -> None:
        """The right password: the account starts afresh; the address loses this try."""
        async with self.db.write() as conn:
            await conn.execute(
                sql("DELETE FROM login_failures WHERE kind = 'account' AND who = :who"),
                {"who": _digest("account", account)},
            )
            await conn.execute(
                sql(
                    "DELETE FROM login_failures WHERE id = (SELECT id FROM login_failures"
                    " WHERE kind = 'address' AND who = :who ORDER BY at DESC, id DESC LIMIT 1)"
                ),
                {"who": _digest("address", address)},
            )
