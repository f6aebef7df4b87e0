"""nftables through `nft -j`: load a batch of JSON commands in one atomic transaction, and
read one of our tables back (`inet kvmnetd`: NAT, app.domain.nat_rules; `bridge kvmnetd`:
per-NIC anti-spoofing, app.domain.port_security). Runs in the calling thread's network
namespace (a forked nft inherits it), never through a shell; the argv and nft's own message
are in every error."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Sequence
from typing import Any

from app.domain.nat_rules import FAMILY, TABLE
from app.host.errors import HostError

log = logging.getLogger(__name__)

NFT = "nft"
TIMEOUT = 30.0
NO_SUCH_TABLE = "No such file or directory"


class NftError(HostError):
    def __init__(self, argv: Sequence[str], message: str) -> None:
        super().__init__(f"{' '.join(argv)}: {message.strip() or 'failed'}")
        self.argv = list(argv)


def _run(argv: list[str], stdin: bytes | None = None) -> bytes:
    try:
        result = subprocess.run(
            argv,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftError(argv, str(exc)) from None
    if result.returncode != 0:
        raise NftError(argv, result.stderr.decode(errors="replace"))
    return result.stdout


def load(commands: Sequence[dict[str, Any]]) -> None:
    """Applies the commands as one transaction: all of them or none."""
    if not commands:
        return
    # compact, and without the check for cycles (commands are trees; rule renderers share
    # memoized subtrees): a fifth less to write and parse for thousands of rules
    text = json.dumps({"nftables": list(commands)}, separators=(",", ":"), check_circular=False)
    _run([NFT, "-j", "-f", "-"], text.encode())


def list_table(family: str = FAMILY, table: str = TABLE) -> list[dict[str, Any]] | None:
    """One of our tables (by default the NAT one) as nft JSON objects, with counter values;
    None when it does not exist."""
    return _list(["table", family, table])


def list_chain(name: str) -> list[dict[str, Any]] | None:
    """One chain of our table as nft JSON objects (its rules with their counters), or None
    when the table or the chain does not exist; far cheaper than the whole table."""
    return _list(["chain", FAMILY, TABLE, name])


def _list(what: list[str]) -> list[dict[str, Any]] | None:
    """`nft -j list <what>` as JSON objects; None when nft says it does not exist."""
    argv = [NFT, "-j", "list", *what]
    try:
        output = _run(argv)
    except NftError as exc:
        if NO_SUCH_TABLE in str(exc):
            return None
        raise
    try:
        listing: list[dict[str, Any]] = json.loads(output)["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise NftError(argv, f"unreadable JSON output: {exc}") from None
    return listing
