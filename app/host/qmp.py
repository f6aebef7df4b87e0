"""QMP connections to qemu: one `Qmp` per VM, with a deadline on every call.

The protocol itself is qemu.qmp's `QMPClient`; this wrapper adds what the supervisor needs:

- `connect()` within a deadline, optionally retrying while qemu has not created or is not yet
  listening on its socket (right after a launch). The socket is connected here and handed to
  the library, so start-up retries do not log a library ERROR each.
- `execute()` within a deadline. A call that times out leaves the connection usable: qemu's late
  reply carries an id nobody waits for any more, and the library drops it.
- Events go to an optional callback and to bounded subscriptions (`events()`). They are taken
  before the library's default listener sees them: that listener keeps every event in a queue
  and a history list that grow for as long as the connection lives when nobody reads them.
- The end of the connection (qemu exited, or closed the socket) ends every subscription and
  sets `disconnected`, which is a second exit signal next to the process's pidfd.

A qemu monitor serves one client at a time; a second client waits in the socket's backlog
until the first goes away (its connect then times out). Keep one `Qmp` per VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from qemu.qmp import (
    ExecInterruptedError,
    ExecuteError,
    Message,
    QMPClient,
    QMPError,
    Runstate,
    StateError,
)

from app.host.errors import HostError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0  # seconds for one QMP command when the caller gives none
RETRY_INTERVAL = 0.01  # between connection attempts while qemu starts
SUBSCRIPTION_SIZE = 256  # events kept per subscription before the oldest are dropped
CLOSE_TIMEOUT = 1.0


class QmpError(HostError):
    """A QMP connection or command failed. `command` is None for connection problems."""

    def __init__(self, message: str, socket_path: Path, command: str | None = None) -> None:
        where = f"{command} on {socket_path}" if command else str(socket_path)
        super().__init__(f"QMP {where}: {message}")
        self.socket_path = socket_path
        self.command = command


class QmpTimeout(QmpError, TimeoutError):
    """The deadline passed before qemu answered (a hung or stopped qemu, or a busy monitor)."""

    _transient = True  # a busy monitor answers the next time


class QmpDisconnected(QmpError):
    """Not connected, or the connection ended (qemu exited or hung up) before the answer."""


class QmpCommandError(QmpError):
    """qemu answered the command with an error (its class and description are kept)."""

    def __init__(self, error_class: str, description: str, socket_path: Path, command: str) -> None:
        super().__init__(f"{error_class}: {description}", socket_path, command)
        self.error_class = error_class
        self.description = description


@dataclass(frozen=True)
class QmpEvent:
    """One QMP event: SHUTDOWN, RESET, STOP, RESUME, POWERDOWN, NIC_RX_FILTER_CHANGED, ..."""

    name: str
    data: Mapping[str, object] = field(default_factory=dict)
    timestamp: float = 0.0  # qemu's wall clock when it emitted the event (epoch seconds)

    @classmethod
    def from_message(cls, msg: Mapping[str, object]) -> QmpEvent:
        stamp = msg.get("timestamp")
        when = 0.0
        if isinstance(stamp, Mapping):
            when = float(stamp.get("seconds", 0)) + float(stamp.get("microseconds", 0)) / 1e6
        data = msg.get("data")
        return cls(
            name=str(msg.get("event")),
            data=dict(data) if isinstance(data, Mapping) else {},
            timestamp=when,
        )


EventHandler = Callable[[QmpEvent], None]


class QmpEvents:
    """The events of one subscription, oldest first. Iterating ends when the connection ends.
    Bounded: a reader that falls behind loses the oldest events, counted in `dropped`."""

    def __init__(self, names: frozenset[str], maxsize: int, socket_path: Path) -> None:
        self.names = names  # empty: every event
        self.dropped = 0
        self._queue: deque[QmpEvent] = deque(maxlen=maxsize)
        self._ready = asyncio.Event()
        self._ended = False
        self._socket_path = socket_path

    def offer(self, event: QmpEvent) -> None:
        if self.names and event.name not in self.names:
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(event)
        self._ready.set()

    def end(self) -> None:
        self._ended = True
        self._ready.set()

    async def get(self, timeout: float | None = None) -> QmpEvent:
        """The next event; TimeoutError after `timeout` s, QmpDisconnected once the
        connection has ended and every event before that was read."""
        async with asyncio.timeout(timeout):
            while not self._queue:
                if self._ended:
                    raise QmpDisconnected("connection ended", self._socket_path)
                self._ready.clear()
                await self._ready.wait()
        return self._queue.popleft()

    def __aiter__(self) -> QmpEvents:
        return self

    async def __anext__(self) -> QmpEvent:
        try:
            return await self.get()
        except QmpDisconnected:
            raise StopAsyncIteration from None


class _Client(QMPClient):
    """QMPClient that hands events to the owning Qmp instead of the default listener."""

    def __init__(self, name: str | None, sink: Callable[[Message], None]) -> None:
        super().__init__(name)
        self._sink = sink

    async def _event_dispatch(self, msg: Message) -> None:
        self._sink(msg)


class Qmp:
    """One QMP connection to one qemu (connect once; make a new Qmp to reconnect)."""

    def __init__(
        self, socket_path: Path, name: str | None = None, on_event: EventHandler | None = None
    ) -> None:
        self.socket_path = socket_path
        self.name = name or socket_path.parent.name
        self._on_event = on_event
        self._client = _Client(self.name, self._dispatch)
        self._subscriptions: list[QmpEvents] = []
        self._started = False
        self._watcher: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._disconnected = asyncio.Event()
        self._passing_fd = asyncio.Lock()  # one descriptor in flight with its getfd

    def __repr__(self) -> str:
        return f"Qmp({str(self.socket_path)!r}, connected={self.connected})"

    @property
    def connected(self) -> bool:
        return self._client.runstate is Runstate.RUNNING

    @property
    def disconnected(self) -> asyncio.Event:
        """Set once a connection that was made has ended (or close() was called)."""
        return self._disconnected

    # ---- connection ------------------------------------------------------------------------

    async def connect(self, timeout: float, retry: bool = False) -> None:
        """Connect and negotiate capabilities within `timeout` seconds. With `retry` (a qemu
        that is starting), a missing socket, a refused connection or a session that qemu ends
        during the greeting is tried again until the deadline."""
        if self._started:
            raise QmpError("a Qmp connects only once", self.socket_path)
        self._started = True
        try:
            async with asyncio.timeout(timeout):
                await self._connect_once_or_retry(retry)
        except TimeoutError:
            self._disconnected.set()
            raise QmpTimeout(f"no greeting within {timeout:g} s", self.socket_path) from None
        except (OSError, QMPError) as exc:
            self._disconnected.set()
            raise QmpDisconnected(f"cannot connect: {exc}", self.socket_path) from exc
        self._watcher = asyncio.create_task(self._watch(), name=f"qmp-watch-{self.name}")
        log.debug("QMP connected to %s", self.socket_path)

    async def _connect_once_or_retry(self, retry: bool) -> None:
        while True:
            try:
                await self._handshake(await self._open_socket(retry))
                return
            except (OSError, QMPError) as exc:
                if not retry or self._client.runstate is not Runstate.IDLE:
                    raise
                # a qemu still starting up may hang up on a connection it accepted early
                log.debug("QMP %s: %s; connecting again", self.socket_path, exc)
                await asyncio.sleep(RETRY_INTERVAL)

    async def _handshake(self, sock: socket.socket) -> None:
        try:
            await self._client.connect(sock)
        except BaseException:
            # Once the library wrapped the socket in a stream, its disconnect closed it (and
            # waited for that); before that point the socket is still ours to close.
            if sock.fileno() >= 0:
                sock.close()
            raise

    async def _open_socket(self, retry: bool) -> socket.socket:
        loop = asyncio.get_running_loop()
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, str(self.socket_path))
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if not retry:
                    raise
            except BaseException:
                sock.close()
                raise
            await asyncio.sleep(RETRY_INTERVAL)

    async def _watch(self) -> None:
        # The library moves to DISCONNECTING on EOF but waits for someone to collect it.
        while self._client.runstate is Runstate.RUNNING:
            await self._client.runstate_changed()
        await self._disconnect_once()

    async def _disconnect_once(self) -> None:
        # One disconnect task shared by the watcher and close(): the library's disconnect
        # must not run twice at once.
        if self._closing is None:
            self._closing = asyncio.create_task(self._disconnect_client())
        await asyncio.shield(self._closing)

    async def _disconnect_client(self) -> None:
        try:
            await self._client.disconnect()
        except (EOFError, OSError, QMPError) as exc:  # how the connection ended, not a fault
            log.debug("QMP %s ended: %r", self.socket_path, exc)
        finally:
            for subscription in self._subscriptions:
                subscription.end()
            self._disconnected.set()

    async def close(self) -> None:
        """Disconnect (idempotent). Subscriptions end; qemu keeps running."""
        if self._watcher is None:  # never connected
            self._disconnected.set()
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._disconnect_once()
        except TimeoutError:
            log.warning("QMP %s did not close within %g s", self.socket_path, CLOSE_TIMEOUT)
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def __aenter__(self) -> Qmp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- commands --------------------------------------------------------------------------

    async def execute(
        self,
        command: str,
        args: Mapping[str, object] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> object:
        """Run one QMP command and return its `return` value, or raise within `timeout` s."""
        if not self.connected:
            raise QmpDisconnected("not connected", self.socket_path, command)
        try:
            async with asyncio.timeout(timeout):
                return await self._client.execute(command, args)
        except TimeoutError:
            raise QmpTimeout(f"no answer within {timeout:g} s", self.socket_path, command) from None
        except ExecuteError as exc:
            raise QmpCommandError(exc.error_class, str(exc), self.socket_path, command) from exc
        except (ExecInterruptedError, StateError) as exc:
            raise QmpDisconnected(f"connection lost: {exc}", self.socket_path, command) from exc

    async def pass_fd(self, fd: int, name: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Hand qemu the descriptor `fd` under `name` (QMP `getfd`, qapi/misc.json): it
        goes as SCM_RIGHTS ancillary data ahead of the command (qemu.qmp's send_fd_scm),
        qemu keeps it for a later `netdev_add ... fd=NAME`. `fd` stays open here."""
        async with self._passing_fd:
            if not self.connected:
                raise QmpDisconnected("not connected", self.socket_path, "getfd")
            try:
                self._client.send_fd_scm(fd)
            except (OSError, QMPError) as exc:
                raise QmpDisconnected(f"passing fd: {exc}", self.socket_path, "getfd") from exc
            await self.execute("getfd", {"fdname": name}, timeout)

    async def status(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        """The VM's run state from query-status: running, paused, prelaunch, shutdown, ..."""
        result = await self.execute("query-status", timeout=timeout)
        if not isinstance(result, Mapping) or not isinstance(result.get("status"), str):
            raise QmpError(f"unexpected query-status answer {result!r}", self.socket_path)
        return str(result["status"])

    # ---- events ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def events(
        self, names: Iterable[str] = (), maxsize: int = SUBSCRIPTION_SIZE
    ) -> Iterator[QmpEvents]:
        """Subscribe to events (all, or those named) for the duration of the block."""
        subscription = QmpEvents(frozenset(names), maxsize, self.socket_path)
        if self._disconnected.is_set():
            subscription.end()
        self._subscriptions.append(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.remove(subscription)

    def _dispatch(self, msg: Message) -> None:
        event = QmpEvent.from_message(msg)
        log.debug("QMP event %s from %s: %s", event.name, self.socket_path, event.data)
        for subscription in self._subscriptions:
            subscription.offer(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # a faulty handler must not end the connection
                log.exception("QMP event handler failed on %s", event.name)
