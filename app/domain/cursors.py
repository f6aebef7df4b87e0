"""Page cursors: where a listing goes on, as `<created_at in µs since the epoch>.<id>`.

The format is stated as a pattern in the OpenAPI schema (CURSOR_PATTERN) and every string it
matches decodes, so a client or fuzzer that follows the schema never gets a cursor refused;
one that points nowhere simply ends the listing. Rows are ordered by (created_at, id).
"""

from __future__ import annotations

import datetime as dt
import re

from app.domain.errors import InvalidInput

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROS_DIGITS = 16  # up to the year 2286; datetime reaches 9999, so every match decodes
ID_MAX = 64
CURSOR_PATTERN = rf"^[0-9]{{1,{_MICROS_DIGITS}}}\.[A-Za-z0-9-]{{1,{ID_MAX}}}$"
CURSOR_MAX = _MICROS_DIGITS + 1 + ID_MAX
_CURSOR_RE = re.compile(CURSOR_PATTERN.removeprefix("^").removesuffix("$"))


def encode_cursor(created_at: dt.datetime, row_id: str) -> str:
    """The cursor after the row (created_at, row_id); a naive created_at is taken as UTC."""
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=dt.UTC)
    micros = (created_at - EPOCH) // dt.timedelta(microseconds=1)
    return f"{micros}.{row_id}"


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """(created_at in UTC, id) of a cursor; InvalidInput when it does not match the format."""
    if not _CURSOR_RE.fullmatch(cursor):
        raise InvalidInput(
            f"cursor {cursor[:CURSOR_MAX]!r} is not a next_cursor this server issued "
            "(<microseconds>.<id>)"
        )
    micros, _, row_id = cursor.partition(".")
    return EPOCH + dt.timedelta(microseconds=int(micros)), row_id
