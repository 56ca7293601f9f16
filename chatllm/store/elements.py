"""Elements (attachments): their rows, each in its thread (whose owner is checked), and
their bytes in the file store, removed with the row.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Row

from chatllm.store.db import Database
from chatllm.store.dialect import Connection, sql
from chatllm.store.files import FileStore
from chatllm.store.thread_rows import ThreadAccessDenied, ThreadRows

if TYPE_CHECKING:
    from chainlit.element import Element, ElementDict


class ElementRows:
    """The `elements` table and the files its rows name."""

    def __init__(self, db: Database, files: FileStore, threads: ThreadRows) -> None:
        self.db = db
        self.files = files
        self.threads = threads

    async def create_element(self, element: Element) -> None:
        stored = await self.store_files([element])
        try:
            async with self.db.write() as conn:
                await self.insert_element(conn, element, stored.get(element.id))
        except BaseException:
            await self.delete_files(list(stored.values()))
            raise

    async def store_files(self, elements: Sequence[Element]) -> dict[str, str]:
        """Each element's bytes in the file store (an element needs a thread, whose owner
        is checked when its row is written); their keys by element id."""
        stored: dict[str, str] = {}
        try:
            for element in elements:
                if not element.thread_id:
                    # An element belongs to a thread; without one no owner could be checked.
                    raise ThreadAccessDenied(f"element {element.id} names no thread")
                data = await _element_bytes(element)
                if data is not None:
                    stored[element.id] = await asyncio.to_thread(self.files.save, data)
        except BaseException:
            await self.delete_files(list(stored.values()))
            raise
        return stored

    async def insert_element(
        self,
        conn: Connection,
        element: Element,
        object_key: str | None,
        checked_thread: str | None = None,
    ) -> None:
        """`checked_thread`: a thread this transaction has already checked and locked
        (`ThreadRows.ensure_thread`), not read again when the element is in it."""
        record = element.to_dict()
        assert element.thread_id
        if element.thread_id != checked_thread:
            await self.threads.ensure_thread(conn, element.thread_id)
        written = await conn.execute(
            sql(
                "INSERT INTO elements (id, thread_id, step_id, type, name, mime, url,"
                " object_key, chainlit_key, display, size, language, page, props)"
                " VALUES (:id, :thread_id, :step_id, :type, :name, :mime, :url,"
                " :object_key, :chainlit_key, :display, :size, :language, :page, :props)"
                " ON CONFLICT (id) DO UPDATE SET props = excluded.props,"
                " object_key = COALESCE(excluded.object_key, elements.object_key)"
                # An element of another thread keeps its own: no update, no row.
                " WHERE elements.thread_id = excluded.thread_id"
                " RETURNING id"
            ),
            {
                "id": element.id,
                "thread_id": element.thread_id,
                "step_id": record.get("forId"),
                "type": record.get("type") or "file",
                "name": element.name,
                "mime": record.get("mime"),
                "url": None if object_key else element.url,
                "object_key": object_key,
                "chainlit_key": element.chainlit_key,
                "display": record.get("display"),
                "size": record.get("size"),
                "language": record.get("language"),
                "page": record.get("page"),
                "props": json.dumps(record.get("props") or {}, ensure_ascii=False),
            },
        )
        if written.first() is None:
            raise ThreadAccessDenied(f"element {element.id} belongs to another thread")

    async def get_element(self, thread_id: str, element_id: str) -> ElementDict | None:
        row = await self.db.first(
            "SELECT * FROM elements WHERE id = :id AND thread_id = :thread",
            {"id": element_id, "thread": thread_id},
        )
        return None if row is None else self.element_dict(row)

    async def element_file(
        self, thread_id: str, element_id: str
    ) -> tuple[Path, str, str | None] | None:
        """The stored file of an element (path, name, mime), if it has one."""
        row = await self.db.first(
            "SELECT object_key, name, mime FROM elements"
            " WHERE id = :id AND thread_id = :thread AND object_key IS NOT NULL",
            {"id": element_id, "thread": thread_id},
        )
        if row is None:
            return None
        return self.files.path(row.object_key), row.name, row.mime

    async def delete_element(self, element_id: str, thread_id: str | None = None) -> None:
        query = "DELETE FROM elements WHERE id = :id"
        if thread_id:
            query += " AND thread_id = :thread"
        row = await self.db.returning(
            query + " RETURNING object_key", {"id": element_id, "thread": thread_id}
        )
        if row is not None and row.object_key:
            await asyncio.to_thread(self.files.delete, row.object_key)

    async def object_keys(self, conn: Connection, where: str, params: dict[str, Any]) -> list[str]:
        rows = await conn.execute(
            sql(f"SELECT object_key FROM elements WHERE {where} AND object_key IS NOT NULL"),
            params,
        )
        return [row.object_key for row in rows]

    async def delete_files(self, keys: list[str]) -> None:
        for key in keys:
            await asyncio.to_thread(self.files.delete, key)

    def element_dict(self, row: Row[Any]) -> ElementDict:
        from chainlit.element import ElementDict

        url = row.url
        if row.object_key:
            url = self.files.url(row.thread_id, row.id)
        return ElementDict(
            id=row.id,
            threadId=row.thread_id,
            type=row.type,
            name=row.name,
            mime=row.mime,
            url=url,
            objectKey=None,
            chainlitKey=row.chainlit_key,
            display=row.display,
            size=row.size,
            language=row.language,
            page=row.page,
            props=json.loads(row.props),
            forId=row.step_id,
        )


async def _element_bytes(element: Element) -> bytes | None:
    if element.type == "custom":
        return None  # its data is its props, stored in the row
    content = getattr(element, "content", None)
    if isinstance(content, str):
        return content.encode("utf-8")
    if isinstance(content, bytes):
        return content
    path = getattr(element, "path", None)
    if path:
        return await asyncio.to_thread(Path(path).read_bytes)
    return None
