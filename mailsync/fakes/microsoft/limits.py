"""What the fake Graph tracks per mailbox besides its content: Outlook's limit of concurrent
requests per mailbox (with its high-water mark) and a short log of the requests themselves."""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

from fastapi import Request

# Outlook answers a mailbox's 5th concurrent request from one app with 429 ApplicationThrottled
# ("Application is over its MailboxConcurrency limit.").
MAILBOX_CONCURRENCY = 4
CONCURRENCY_RETRY_AFTER = 1
_LOG_LENGTH = 2000


class MailboxLimits:
    """Thread-safe per-mailbox in-flight counts and request logs; keys are lower-case addresses."""

    def __init__(self, concurrency: int = MAILBOX_CONCURRENCY) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be positive")
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._in_flight: Counter[str] = Counter()
        self._peak: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._requests: dict[str, deque[dict[str, Any]]] = {}

    def enter(self, address: str) -> bool:
        """Admit one request for `address`; False (and counted) when it would be one too many."""
        key = address.lower()
        with self._lock:
            if self._in_flight[key] >= self.concurrency:
                self._rejected[key] += 1
                return False
            self._in_flight[key] += 1
            self._peak[key] = max(self._peak[key], self._in_flight[key])
            return True

    def leave(self, address: str) -> None:
        with self._lock:
            self._in_flight[address.lower()] -= 1

    def record(self, address: str, operation: str, request: Request) -> None:
        entry = {
            "operation": operation,
            "path": request.url.path,
            "query": dict(request.query_params),
            "prefer": request.headers.getlist("prefer"),
        }
        with self._lock:
            log = self._requests.setdefault(address.lower(), deque(maxlen=_LOG_LENGTH))
            log.append(entry)

    def stats(self, address: str) -> dict[str, int]:
        key = address.lower()
        with self._lock:
            return {
                "limit": self.concurrency,
                "in_flight": self._in_flight[key],
                "peak": self._peak[key],
                "rejected": self._rejected[key],
            }

    def requests(self, address: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._requests.get(address.lower(), ()))

    def reset(self, address: str) -> None:
        """Forget the peak, the rejections and the log (requests in flight stay counted)."""
        key = address.lower()
        with self._lock:
            self._peak[key] = self._in_flight[key]
            self._rejected.pop(key, None)
            self._requests.pop(key, None)
