"""QEMU's `key=value,key=value` option strings, escaped the QEMU way (a comma is written
twice, see QEMU's docs/system/invocation: "commas in values must be doubled"), so that no
user-supplied value can add an option."""

from __future__ import annotations

from app.domain.errors import InvalidInput


def qemu_value(value: str) -> str:
    """One value inside a `key=value,key=value` option string."""
    if any(ch in value for ch in "\0\n\r"):
        raise InvalidInput(f"{value!r} contains a control character")
    return value.replace(",", ",,")


def qemu_options(head: str, **options: str | int | None) -> str:
    """`head,key=value,...` with None values left out; `_` in a key is written `-`."""
    parts = [head]
    for key, value in options.items():
        if value is not None:
            parts.append(f"{key.replace('_', '-')}={qemu_value(str(value))}")
    return ",".join(parts)
