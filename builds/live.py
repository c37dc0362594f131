"""Live updates of a build for browsers: the channel-layer group of a build and a
publisher that never holds up a build.

The database is the record; the channel is a preview. So publishing is fire and
forget: messages go, in order, through one bounded queue on one event loop, and are
dropped (not queued without end) when the layer is slow or Redis is down. Browsers
catch up from the database by line number.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any

from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

# Messages waiting to be sent; each holds one stored batch (<= 2000 lines, 256 KiB),
# so this bounds the memory a slow or absent channel layer can take.
QUEUE_SIZE = 64
# Set by `goci up` to daphne's loop: the in-memory layer only works from the loop it
# lives on (STACK-NOTES P5). Worker processes run a loop of their own.
SERVER_LOOP: asyncio.AbstractEventLoop | None = None


def build_group(build_id: int) -> str:
    return f"build-{build_id}"


# The Step columns a "step" message is made of (read with .values(*STEP_VALUES)).
STEP_VALUES = (
    "name",
    "status",
    "exit_code",
    "error",
    "started_at",
    "finished_at",
    "image_id",
    "digests",
)


def step_message(step: Mapping[str, Any]) -> dict[str, Any]:
    """The "step" message a browser gets, from a step's STEP_VALUES: one function for
    the worker's live message and the consumer's catch-up, so the two cannot differ.
    Times are ISO strings (channels_redis sends msgpack, which has no datetime)."""
    started, finished = step["started_at"], step["finished_at"]
    return {
        "type": "step",
        "step": step["name"],
        "status": step["status"],
        "exit_code": step["exit_code"],
        "error": step["error"] or None,  # for a skipped step, why
        "started_at": started.isoformat() if started else None,
        "finished_at": finished.isoformat() if finished else None,
        "duration": (finished - started).total_seconds() if started and finished else None,
        # A `build:` step's image and pushed digests (absent from older rows: "", {}).
        "image_id": step.get("image_id") or "",
        "digests": step.get("digests") or {},
    }


class Publisher:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        loop = loop or SERVER_LOOP
        self._thread: threading.Thread | None = None
        if loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=loop.run_forever, name="goci-publisher", daemon=True
            )
            self._thread.start()
        self.loop = loop
        self.dropped = 0
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] | None = None
        self._task = asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout=10)

    async def _start(self) -> asyncio.Task[None]:
        self._queue = asyncio.Queue(maxsize=QUEUE_SIZE)
        return asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        assert self._queue is not None
        layer = get_channel_layer()
        while (item := await self._queue.get()) is not None:
            group, message = item
            try:
                await asyncio.wait_for(layer.group_send(group, message), timeout=2)
            except Exception as exc:  # noqa: BLE001  (Redis down must not stop builds)
                self.dropped += 1
                if self.dropped % 100 == 1:  # an outage would otherwise log 10 lines a second
                    log.warning("live updates dropped (%d so far): %s", self.dropped, exc)

    def _put(self, item: tuple[str, dict[str, Any]] | None) -> None:
        assert self._queue is not None
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1

    def publish(self, build_id: int, message: dict[str, Any]) -> None:
        """Queue a message for the build's group; returns at once."""
        self.loop.call_soon_threadsafe(self._put, (build_group(build_id), message))

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (for at most `timeout`), then stop."""
        self.loop.call_soon_threadsafe(self._put, None)
        done = asyncio.run_coroutine_threadsafe(
            asyncio.wait([self._task], timeout=timeout), self.loop
        )
        try:
            done.result(timeout=timeout + 1)
        except Exception:  # noqa: BLE001
            log.warning("live updates not all sent before shutdown")
        if self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=timeout)
            self.loop.close()
