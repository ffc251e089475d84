"""A TCP relay that makes a local client look like another host to a server on 127.0.0.1.

It listens on ``127.0.0.1`` and opens each connection onward from ``source`` (by default
``127.0.0.2``: a loopback address, so the test needs no network, but not one the SuperLink
takes for its operator). TLS passes through untouched: the client verifies the server's
certificate for ``127.0.0.1`` end to end, exactly as a remote client holding ``ca.pem`` would.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def relay(port: int, source: str = "127.0.0.2") -> Iterator[int]:
    """Relay ``127.0.0.1:<yielded port>`` to ``127.0.0.1:port``, connecting from ``source``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    sockets: list[socket.socket] = [listener]

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
            sockets.extend((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
