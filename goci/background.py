"""A daemon thread beside the server or a worker that does some work when it falls
due: send commit statuses (builds/commit_status.py), notifications
(builds/notifications.py), start schedules' runs (builds/schedules.py)."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Generic, TypeVar

from django.db import close_old_connections, connection
from django.dispatch import Signal

log = logging.getLogger(__name__)

Row = TypeVar("Row")


def seconds_until(moment: datetime | None, now: datetime) -> float | None:
    """What next_due() answers for the earliest due time found (None: nothing due)."""
    return None if moment is None else max((moment - now).total_seconds(), 0.0)


class Background(ABC):
    """Runs `work()` until stop(): when woken (wake(), or `signal` sent in this process),
    when `next_due()` says something falls due, and every `poll` seconds for what other
    processes queued. A failure (a database outage) is logged, and looked at again
    after `poll`. Subclasses name the thread and say what they do."""

    name = "goci-background"
    what = "background work"  # for the log: "<what>: could not run"

    def __init__(self, poll: float, stop_wait: float, signal: Signal | None = None) -> None:
        self.poll = poll
        self.stop_wait = stop_wait
        self.signal = signal
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def work(self) -> None:
        """One round: do everything due now."""

    def next_due(self) -> float | None:
        """Seconds until something falls due (0: now), or None if nothing is known."""
        return None

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def start(self) -> None:
        if self.signal is not None:
            self.signal.connect(self.wake)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the piece of work under way, if any (at most `timeout` seconds)."""
        if self.signal is not None:
            self.signal.disconnect(self.wake)
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.stop_wait if timeout is None else timeout)

    def wake(self, **_: object) -> None:
        self._wake.set()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                close_old_connections()
                wait = self.poll
                try:
                    self.work()
                    due = self.next_due()
                    if due is not None:
                        wait = min(max(due, 0.05), self.poll)
                except Exception:  # a database outage: look again later
                    log.warning("%s: could not run", self.what, exc_info=True)
                    connection.close()
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            connection.close()


class OutboxSender(Background, Generic[Row]):
    """Sends the due rows of an outbox one after another: claim() one (None: none is
    due), send() it; next_due() from the outbox's next retry."""

    @abstractmethod
    def claim(self) -> Row | None:
        """Take the next due row (None: none is due)."""

    @abstractmethod
    def send(self, row: Row) -> None:
        """Send it, and record how that went."""

    def work(self) -> None:
        self.send_due()

    def send_due(self) -> int:
        """Send every row due now, one after another; how many were tried."""
        count = 0
        while not self.stopping and (row := self.claim()) is not None:
            self.send(row)
            count += 1
        return count
