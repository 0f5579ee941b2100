"""A small TCP proxy in front of PostgreSQL that can stop answering: ``stall`` (nothing
forwarded either way; the sockets stay open, as behind a stalled network or proxy) and
``drop_commit`` (the client's COMMIT reaches the server, the acknowledgement never comes
back)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class StallingProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.stall = False
        self.drop_commit = False
        self.commits_dropped = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        mute = False  # this connection's answers are no longer forwarded
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([client, server], [], [], 0.1)
                if self.stall:
                    continue  # nothing read, nothing forwarded: the peer waits
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        server.sendall(data)
                        if self.drop_commit and b"COMMIT" in data:
                            mute = True
                            self.commits_dropped += 1
                    elif not mute:
                        client.sendall(data)
            except OSError:
                return
