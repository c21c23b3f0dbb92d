"""Loopback receivers for the job tests, on top of tests/webhooks/receiver.py."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

from tests.webhooks.receiver import Receiver, Reply


class Loopback(Receiver):
    """A Receiver whose listen backlog takes a worker's burst of concurrent connections."""

    def __init__(self, reply: Reply | None = None) -> None:
        super().__init__(reply)
        self._server.socket.listen(512)  # the default 5 resets connections under load


class Scripted(Loopback):
    """Answers the given statuses in order, then repeats the last one forever."""

    def __init__(self, *statuses: int) -> None:
        self._script = list(statuses)
        self._script_lock = threading.Lock()
        super().__init__()

    @property  # type: ignore[override]
    def reply(self) -> Reply:
        with self._script_lock:
            status = self._script.pop(0) if len(self._script) > 1 else self._script[0]
        return Reply(status=status)

    @reply.setter
    def reply(self, _value: Reply) -> None:
        pass  # the script decides


def ids(rx: Receiver) -> Counter[str]:
    """How many times each `webhook-id` arrived."""
    return Counter(r.headers["webhook-id"] for r in list(rx.requests))


def bodies(rx: Receiver) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in list(rx.requests)]
