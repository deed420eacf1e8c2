"""A TCP forwarder on loopback that a test can cut: a network partition between one worker and
the API server, with everything else left as it is. It can also hold new connections
unanswered (`hold`) until `release`: a request in flight, for as long as the test needs."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support.ports import free_port


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.cut_off = False
        self.holding = False
        self.held = threading.Event()  # set when a connection arrives while holding
        self._held: list[socket.socket] = []
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Every open connection dies and new ones are refused at once."""
        with self._lock:
            self.cut_off = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def hold(self) -> None:
        """New connections are accepted but nothing is forwarded until `release`."""
        with self._lock:
            self.holding = True
            self.held.clear()

    def release(self) -> None:
        """Forward the held connections (and every new one) from now on."""
        with self._lock:
            self.holding = False
            held, self._held = self._held, []
        for client in held:
            self._forward(client)

    def close(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for client in held:
            client.close()
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self.cut_off:
                client.close()
                continue
            with self._lock:
                if self.holding:
                    self._held.append(client)
                    self.held.set()
                    continue
            self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets.update((client, upstream))
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy one direction; when it ends, the connection ends (HTTP needs no half-close)."""
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                for sock in (source, sink):
                    self._sockets.discard(sock)
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
