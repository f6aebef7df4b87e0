"""Who a bearer token is: a project token's principal, or nobody (revoked, expired, or
unknown). Only the secret's hash is looked up; the secret itself is never stored.

A token's last use (`last_used_at`) is recorded by `LastUse`: throttled in memory to one
write per token per LAST_USED_GRANULARITY_S, and written by one worker thread after the
request was let through, so a request never waits for the database's write lock for it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from app.db.models import ApiToken
from app.db.repositories import ApiTokenRepository, touch_tokens
from app.db.session import Database, DatabaseError, Session
from app.domain.projects import LAST_USED_GRANULARITY_S
from app.domain.tenancy import Principal, Role, Via, secret_hash

log = logging.getLogger(__name__)


def authenticate(session: Session, secret: bytes, now: dt.datetime) -> Principal | None:
    """The principal of the project token whose secret is `secret`; None when no live token
    has it (never issued, revoked, or expired at `now`)."""
    token = ApiTokenRepository(session).by_secret_hash(secret_hash(secret))
    if token is None or not _live(token, now):
        return None
    return Principal(token.project_id, Role(token.role), Via.TOKEN, token.id)


def still_live(session: Session, principal: Principal, now: dt.datetime) -> bool:
    """Whether the token a long-held request (the event stream) authenticated with is still
    live at `now`: not revoked, not expired, not gone with its project. Principals without
    a token (the unix socket, the admin token file) always are."""
    if principal.token_id is None:
        return True
    token = ApiTokenRepository(session).get(principal.token_id)
    return token is not None and _live(token, now)


def _live(token: ApiToken, now: dt.datetime) -> bool:
    if token.revoked_at is not None:
        return False
    return token.expires_at is None or token.expires_at > now


class LastUse:
    """Records when tokens authenticate: `seen()` is O(1) on the caller's thread (the event
    loop) and never touches the database; a token seen again within `granularity` seconds
    of its last recorded use is not written again. The writes go, batched, through one
    worker thread (its own unit of work: it waits for the write lock, the request does not).
    """

    def __init__(self, db: Database, granularity: float = LAST_USED_GRANULARITY_S) -> None:
        self.db = db
        self.granularity = dt.timedelta(seconds=granularity)
        self._lock = threading.Lock()
        self._recorded: dict[str, dt.datetime] = {}  # token id -> last time queued
        self._pending: dict[str, dt.datetime] = {}
        self._flushing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-last-use")

    def seen(self, token_id: str, at: dt.datetime) -> None:
        with self._lock:
            last = self._recorded.get(token_id)
            if last is not None and at - last < self.granularity:
                return
            self._recorded[token_id] = at
            self._pending[token_id] = at
            if self._flushing:
                return  # the running flush picks it up
            self._flushing = True
        try:
            self._executor.submit(self._flush)
        except RuntimeError:  # shut down: the daemon is stopping, the use is not recorded
            with self._lock:
                self._flushing = False

    def _flush(self) -> None:
        while True:
            with self._lock:
                batch, self._pending = self._pending, {}
                if not batch:
                    self._flushing = False
                    return
            try:
                with self.db.unit_of_work() as session:
                    touch_tokens(session, batch)
            except DatabaseError:
                log.exception("could not record the last use of %d token(s)", len(batch))

    def wait(self) -> None:
        """Block until what was seen so far is written (tests): the one worker runs its
        tasks in order, and a flush runs until nothing is pending."""
        self._executor.submit(lambda: None).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
