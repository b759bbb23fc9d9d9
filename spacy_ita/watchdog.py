"""A deadline for a whole network exchange. A socket timeout bounds each read,
not their sum: a server that drips one byte a second never trips it. The
watchdog shuts the connection down at the deadline instead, which ends any
read or write on it at once, in whichever thread it blocks."""
import socket
import threading
import time
from typing import List


class SocketWatchdog:
    """Shuts every socket it watches down at `deadline` (a time.monotonic()
    value); a socket handed over after the deadline is shut down at once.
    `fired` says whether it did, since a shutdown may read as a clean end of
    the answer. Call `stop` when the exchange is over."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.fired = False
        self._sockets: List[socket.socket] = []
        self._lock = threading.Lock()  # _fire against watch and stop
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            # A duplicate: TLS wrapping detaches the original socket object.
            self._sockets.append(sock.dup())
            if self.fired:
                _shut_down(self._sockets[-1])

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                _shut_down(sock)

    def stop(self) -> None:
        self._timer.cancel()
        with self._lock:  # a closed descriptor's number may be reused: never shut it down
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _shut_down(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the other side
