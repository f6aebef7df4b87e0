"""A tiny HTTP/1.0 server for PXE-booted test guests (iPXE), run by tests/pxe.py as its own
process inside a namespace: `python -I -S pxe_http.py DIR ADDRESS PORT`.

GET /<file> sends a file of DIR; GET /hold answers with a body it never finishes (a few bytes
every 0.5 s), so the guest's iPXE keeps its NIC open for as long as a test needs. Each request
is one JSON line on stdout: {"peer", "path", "bytes", "seconds"}, where `seconds` runs from the
first byte sent until the peer has acknowledged the last one (the socket's TIOCOUTQ is 0,
tcp(7)), so bytes / seconds is the guest's receive throughput. Standard library only: the
nested host's Python pays for every import.
"""

from __future__ import annotations

import fcntl
import json
import socket
import struct
import sys
import termios
import threading
import time
from pathlib import Path


def unacked(conn: socket.socket) -> int:
    """Bytes sent but not yet acknowledged by the peer, plus those not sent yet (TIOCOUTQ)."""
    raw = fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


def hold(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    while True:
        conn.sendall(b"x" * 64)
        time.sleep(0.5)


def send_file(conn: socket.socket, path: Path) -> tuple[int, float]:
    data = path.read_bytes()
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data))
    started = time.monotonic()
    conn.sendall(data)
    while unacked(conn) > 0:
        time.sleep(0.001)
    return len(data), time.monotonic() - started


def serve(conn: socket.socket, peer: str, root: Path) -> None:
    with conn:
        request = conn.recv(4096).decode("latin-1")
        name = request.split(" ")[1] if request.count(" ") >= 2 else "/"
        record: dict[str, object] = {"peer": peer, "path": name}
        try:
            if name == "/hold":
                print(json.dumps(record | {"bytes": None, "seconds": None}), flush=True)
                hold(conn)
            target = root / name.lstrip("/")
            if "/" in name.lstrip("/") or not target.is_file():
                conn.sendall(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                record |= {"bytes": 0, "seconds": 0.0, "status": 404}
            else:
                size, seconds = send_file(conn, target)
                record |= {"bytes": size, "seconds": seconds}
        except OSError as exc:  # the guest went away (reset, VM deleted)
            record["error"] = str(exc)
        print(json.dumps(record), flush=True)


def main() -> None:
    root, address, port = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    server = socket.create_server((address, port), reuse_port=False)
    print(json.dumps({"listening": f"{address}:{port}"}), flush=True)
    while True:
        conn, (peer, _) = server.accept()
        threading.Thread(target=serve, args=(conn, peer, root), daemon=True).start()


if __name__ == "__main__":
    main()
