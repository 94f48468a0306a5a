"""A control socket another local account listens on, answering OpenSSH's mux protocol
(PROTOCOL.mux) as a master would, and writing down everything it is sent.

    python tests/foreign_master.py <socket path> <log file> <uid> <gid>

Started as root, it becomes that other account (uid, gid) before it binds the socket, so
the socket is that account's, as if its owner had started it.

Each event is one JSON line in the log: a connection, the bytes of each packet, and every
descriptor passed. A relay that vouches for masters never produces one.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
import sys
import threading

HELLO, NEW_SESSION, ALIVE_CHECK = 0x00000001, 0x10000002, 0x10000004
SESSION_OPENED, ALIVE = 0x80000006, 0x80000005


def log(path: str, **event: object) -> None:
    with open(path, "a") as out:
        out.write(json.dumps(event) + "\n")


def serve(conn: socket.socket, logfile: str) -> None:
    log(logfile, event="connect")
    conn.sendall(struct.pack(">III", 8, HELLO, 4))
    while True:
        fds = array.array("i")
        try:
            data, ancdata, _, _ = conn.recvmsg(65536, socket.CMSG_LEN(16 * fds.itemsize))
        except OSError:
            return
        if not data:
            return
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        log(logfile, event="bytes", hex=data.hex(), fds=len(fds))
        for fd in fds:
            os.close(fd)
        if len(data) >= 12:
            kind, rid = struct.unpack_from(">II", data, 4)
            if kind == NEW_SESSION:
                conn.sendall(struct.pack(">IIII", 12, SESSION_OPENED, rid, 1))
            elif kind == ALIVE_CHECK:
                conn.sendall(struct.pack(">IIII", 12, ALIVE, rid, os.getpid()))


def main() -> None:
    path, logfile = sys.argv[1], sys.argv[2]
    os.setgroups([])
    os.setgid(int(sys.argv[4]))
    os.setuid(int(sys.argv[3]))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    log(logfile, event="listening", uid=os.getuid())
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, logfile), daemon=True).start()


if __name__ == "__main__":
    main()
