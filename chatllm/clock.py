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
    try:
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-05:00 is past the last time Python has
        raise ValueError(f"{value!r} is beyond the times this app can keep") from None


def readable_time(value: str) -> str:
    """ "2026-12-01 21:07 UTC", for people; ValueError for a string that is no time."""
    return parse_time(value).strftime("%Y-%m-%d %H:%M UTC")
