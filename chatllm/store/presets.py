"""Each user's saved presets: a name and the sampling values it sets."""

from __future__ import annotations

import json
from typing import Any

from chatllm.clock import utc_now
from chatllm.errors import TooManyPresets
from chatllm.store.db import Database, writes
from chatllm.store.dialect import sql


class PresetRows:
    """The `presets` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def for_user(self, user_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The user's presets as (name, values), by name regardless of case."""
        rows = await self.db.rows(
            "SELECT name, preset_values FROM presets WHERE user_id = :user"
            " ORDER BY lower(name), name",
            {"user": user_id},
        )
        return [(str(row.name), json.loads(row.preset_values)) for row in rows]

    @writes("the preset could not be saved")
    async def save(self, user_id: str, name: str, values: dict[str, Any], most: int) -> None:
        """Save (or overwrite) the user's preset `name`; a new one only while the user has
        fewer than `most`."""
        async with self.db.write() as conn:
            await conn.execute(  # one user's presets change one write at a time
                sql("SELECT 1 FROM users WHERE id = :user" + self.db.dialect.for_update),
                {"user": user_id},
            )
            count = await conn.scalar(
                sql("SELECT count(*) FROM presets WHERE user_id = :user AND name != :name"),
                {"user": user_id, "name": name},
            )
            if (count or 0) >= most:
                raise TooManyPresets(most=most)
            await conn.execute(
                sql(
                    "INSERT INTO presets (user_id, name, preset_values, created_at)"
                    " VALUES (:user, :name, :values, :now)"
                    " ON CONFLICT (user_id, name)"
                    " DO UPDATE SET preset_values = excluded.preset_values"
                ),
                {"user": user_id, "name": name, "values": json.dumps(values), "now": utc_now()},
            )

    @writes("the preset could not be deleted")
    async def delete(self, user_id: str, name: str) -> bool:
        """Whether the user had a preset `name` (it is gone now)."""
        return bool(
            await self.db.execute(
                "DELETE FROM presets WHERE user_id = :user AND name = :name",
                {"user": user_id, "name": name},
            )
        )
