"""A unix-socket relay in front of the daemon, to make the transport fail the way a reset or a
restart does: it can start listening late, and it can cut the first connection just as the
daemon's answer to the first request arrives (the request was served, the answer is lost)."""

from __future__ import annotations

import os
import socket
import threading
import time


class Relay:
    def __init__(self, upstream: str, path: str, *, listen_after: float = 0.0, lose_first_answer: bool = False):
        self.upstream = upstream
        self.path = path
        self.listen_after = listen_after
        self.lose_first_answer = lose_first_answer
        self.connections = 0
        self.answers_lost = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if os.path.exists(self.path):
            os.unlink(self.path)

    def _serve(self) -> None:
        time.sleep(self.listen_after)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(self.path)
        srv.listen(8)
        srv.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = srv.accept()
            except TimeoutError:
                continue
            self.connections += 1
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            up.connect(self.upstream)
            cut = self.lose_first_answer and self.connections == 1
            threading.Thread(target=self._pipe, args=(client, up, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, client, cut), daemon=True).start()
        srv.close()

    def _pipe(self, src: socket.socket, dst: socket.socket, cut_at_answer: bool) -> None:
        """Copies bytes; with `cut_at_answer`, reads HTTP/2 frames and closes both sides at the
        first frame of a stream (a response), relaying only connection-level frames before it."""
        buf = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not cut_at_answer:
                    dst.sendall(data)
                    continue
                buf += data
                while True:
                    # The server sends no preface; every frame has a 9-byte header.
                    if len(buf) < 9:
                        break
                    length = int.from_bytes(buf[:3], "big")
                    stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    if stream != 0:
                        self.answers_lost += 1
                        raise ConnectionResetError("the answer is lost")
                    if len(buf) < 9 + length:
                        break
                    dst.sendall(buf[: 9 + length])
                    buf = buf[9 + length :]
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
