"""A slow road to Prefect and an observed orchestrator: what the overload tests slow and count."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from mailsync.db.tables import SyncJob
from mailsync.orchestration.orchestrator import Orchestrator

URL = "/v1/email/sync"


WAIT_S = 0.5


SYNC_CAP, GENERAL_CAP = 2, 4


SLOW_S = 0.25  # what the proxy adds to each chunk sent to Prefect during the burst


class SlowProxy:
    """A TCP proxy to Prefect that forwards each chunk a client sends after `delay` seconds."""

    def __init__(self, port: int, delay: float) -> None:
        self.upstream, self.delay = ("127.0.0.1", port), delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/api"
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        try:
            while data := src.recv(65536):
                if slow:
                    time.sleep(self.delay)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for sock in self._sockets:
            sock.close()


class ObservedOrchestrator(Orchestrator):
    """The real orchestrator, counting the triggers it is running at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._count_lock = threading.Lock()
        self.running = self.peak = 0

    def trigger(self, *args: Any, **kwargs: Any) -> SyncJob:
        with self._count_lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            return super().trigger(*args, **kwargs)
        finally:
            with self._count_lock:
                self.running -= 1
