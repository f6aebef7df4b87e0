"""A TCP throughput meter for the rate-limit tests, run in a namespace with `ip netns exec`
(standard library only: it runs as `python -I -S`).

`recv ADDRESS PORT`: accept one connection, read it to its end, print `<bytes> <seconds>`
(from the first byte to the last). `send ADDRESS PORT SECONDS`: connect (retrying while the
receiver starts) and send for SECONDS, then close. Prints `ready` once listening or
connected. `echo ADDRESS PORT SECONDS`: send to an echo server for SECONDS while reading what
comes back, print `<bytes back> <seconds>` (a round trip: the slower direction bounds it)."""

from __future__ import annotations

import socket
import sys
import threading
import time

CHUNK = 65536


def drain(conn: socket.socket) -> tuple[int, float, float]:
    """Read until the peer closes: (bytes, monotonic time of the first and the last read)."""
    total, first, last = 0, 0.0, 0.0
    while True:
        data = conn.recv(CHUNK)
        if not data:
            return total, first, last
        last = time.monotonic()
        if not total:
            first = last
        total += len(data)


def receive(address: str, port: int) -> None:
    with socket.create_server((address, port)) as server:
        print("ready", flush=True)
        conn, _ = server.accept()
        with conn:
            total, first, last = drain(conn)
    print(total, round(last - first, 6), flush=True)


def send(address: str, port: int, seconds: float) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = socket.create_connection((address, port), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    payload = b"\0" * CHUNK
    # a small send buffer: what is left in it after SECONDS drains at the limited rate
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 131072)
    with conn:
        print("ready", flush=True)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            conn.sendall(payload)


def echo(address: str, port: int, seconds: float) -> None:
    conn = socket.create_connection((address, port), timeout=30)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 131072)
    payload = b"x" * CHUNK

    def pump() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)  # the echo server's cat ends once it has echoed all

    sender = threading.Thread(target=pump, daemon=True)
    sender.start()
    total, first, last = drain(conn)
    sender.join()
    conn.close()
    print(total, round(last - first, 6), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        receive(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "echo":
        echo(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
