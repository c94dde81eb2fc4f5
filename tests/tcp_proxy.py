"""A TCP proxy the tests can cut and restore: a database "restarted" without touching the
machine's server.

`cut()` closes the listening socket and every connection through it (the client sees its
connection reset, then connections refused), as when the server goes away; `restore()`
listens again on the same port. `reset()` resets the connections open now and goes on
listening, as a server restarted between two calls, or a middlebox dropping its state.
`freeze()` stops relaying anything, either way, on every connection, new ones included (they
are still accepted): a hung server, which takes connections and answers nothing; `thaw()`
lets what was held go through.
`hang()` keeps every connection, and takes new ones, but passes nothing on: a server that
holds the connection open and answers nothing (TCP itself stays healthy, so keepalives
cannot tell).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._flowing = threading.Event()
        self._flowing.set()
        self.port = 0
        self.hung = False
        self.restore()

    def restore(self) -> None:
        """Listen (again) on the proxy's port."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def cut(self) -> None:
        """Stop listening and drop every connection, as a server that went away."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self.reset()

    def reset(self) -> int:
        """Reset every connection open now (the listener stays); how many there were."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                # RST rather than FIN: the peer learns at once that the connection is gone.
                conn.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            conn.close()
        return len(conns) // 2

    def freeze(self) -> None:
        """Relay nothing more until thaw(): a server that hangs."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def hang(self) -> None:
        """From now on pass nothing on, either way, on old connections and new ones."""
        self.hung = True

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self.hung:  # accepted, and never answered
                with self._lock:
                    self._conns.append(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        pairs = {a: b, b: a}
        try:
            while True:
                if not self._flowing.wait(0.1):
                    continue  # frozen: what comes stays in the sockets' buffers
                ready, _, _ = select.select(list(pairs), [], [], 0.1)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if not self.hung:
                        pairs[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
