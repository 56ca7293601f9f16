"""Feedback on steps: one per step, a new thumb replacing the old one."""

from __future__ import annotations

import uuid

from chainlit.types import Feedback

from chatllm.store.db import Database
from chatllm.store.dialect import sql


class FeedbackRows:
    """The `feedbacks` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def upsert_feedback(self, feedback: Feedback) -> str:
        feedback_id = feedback.id or str(uuid.uuid4())
        async with self.db.write() as conn:
            await conn.execute(  # the step's feedback changes one write at a time
                sql("SELECT 1 FROM steps WHERE id = :step" + self.db.dialect.for_update),
                {"step": feedback.forId},
            )
            # One feedback per step: a new thumb replaces the old one.
            await conn.execute(
                sql("DELETE FROM feedbacks WHERE step_id = :step AND id != :id"),
                {"step": feedback.forId, "id": feedback_id},
            )
            await conn.execute(
                sql(
                    "INSERT INTO feedbacks (id, step_id, value, comment)"
                    " VALUES (:id, :step, :value, :comment)"
                    " ON CONFLICT (id) DO UPDATE SET value = excluded.value,"
                    " comment = excluded.comment"
                ),
                {
                    "id": feedback_id,
                    "step": feedback.forId,
                    "value": int(feedback.value),
                    "comment": feedback.comment,
                },
            )
        return feedback_id

    async def delete_feedback(self, feedback_id: str) -> bool:
        return bool(
            await self.db.execute("DELETE FROM feedbacks WHERE id = :id", {"id": feedback_id})
        )
