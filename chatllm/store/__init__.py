"""Persistence: the SQLite database, its migrations, and Chainlit's data layer over it."""

from chatllm.errors import StoreError
from chatllm.store.datalayer import ChatDataLayer, ThreadAccessDenied
from chatllm.store.db import Database, migrated
from chatllm.store.files import FileStore

__all__ = ["ChatDataLayer", "Database", "FileStore", "StoreError", "ThreadAccessDenied", "migrated"]
