"""The one timestamp format of the store, receipts and exports: UTC, ISO 8601, to the
microsecond, with a Z ("2026-12-01T21:07:00.000000Z"). Its strings sort as the times do."""

from __future__ import annotations

from datetime import UTC, datetime


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_now() -> str:
    return format_time(datetime.now(UTC))


def parse_time(value: str) -> datetime:
    """An ISO 8601 time (any offset; none means UTC), in UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
