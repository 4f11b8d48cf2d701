"""Notifications to the application: every recorded status change POSTed as JSON to
``[notify] url``, signed with HMAC-SHA256, in order, retried with backoff.

It reads the event store after a cursor kept in the store itself, so a restart resumes where
it stopped (at least once: the application de-duplicates by ``seq``). It runs as its own task:
a slow or failing application delays notifications, never delivery.

Nodes sharing a PostgreSQL event store share the cursor too: one of them at a time sends
(``EventStore.lead``), the others stand by and take over, from the cursor, when it stops or
loses the database. The cursor is a feed position (``EventStore.events_after``), so events that
other nodes commit out of ``seq`` order are neither skipped nor sent twice.

The signature: ``X-Mqd-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`` with
``X-Mqd-Timestamp: <unix seconds>``; the application recomputes it and refuses old timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from typing import TYPE_CHECKING

from mqd.errors import TrackingError
from mqd.tracking.answers import FeedEvent
from mqd.version import __version__

if TYPE_CHECKING:
    import aiohttp

    from mqd.config.schema import NotifyConfig
    from mqd.tracking.tracker import Tracker

__all__ = ["Notifier", "notification_body", "sign"]

log = logging.getLogger(__name__)

CURSOR = "notify"
#: Backoff between tries of one notification: 1 s doubling to 5 minutes.
FIRST_DELAY = 1.0
MAX_DELAY = 300.0
#: When nothing was recorded, look again after this long anyway (other nodes' events, a
#: standby node's try to take over).
IDLE_POLL = 5.0
#: Soon after this node recorded something that could not be read yet (another transaction,
#: still running, holds the feed back), look again after this long.
PENDING_POLL = 0.2
PENDING_FOR = 2.0


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return "v1=" + digest.hexdigest()


def notification_body(event: FeedEvent) -> bytes:
    """The JSON an application receives for one event."""
    document = {
        "seq": event.seq,
        "id": event.message,
        "message_id": event.message_id,
        "sender": event.sender,
        "recipient": event.recipient,
        "status": event.status.value,
        "at": event.at,
        "source": event.source,
        "relay": event.relay,
        "provider_id": event.provider_id,
        "reply": event.reply,
        "detail": event.detail,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class _Permanent(Exception):
    """The application refused the notification (a 4xx other than 408/429): do not retry."""


class Notifier:
    def __init__(self, tracker: Tracker, config: NotifyConfig) -> None:
        assert config.url is not None and config.secret is not None
        self.tracker = tracker
        self.config = config
        self.url = config.url
        self._secret = config.secret.reveal().encode("utf-8")
        self._task: asyncio.Task[None] | None = None
        #: The tracker's store generation followed last (None before the first).
        self._generation: int | None = None
        #: Whether it said it waits for a paused tracker (it says so once a pause).
        self._waiting = False
        #: Whether it said another node sends the notifications (once a stand-by).
        self._standby = False
        #: How many were sent and how many given up on (for logs and tests).
        self.sent = 0
        self.dropped = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqd-notify")
        log.info("notifying %s of status changes", self.url)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass  # the normal end
            except Exception:
                log.exception("notifier failed")

    async def _run(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    await self._follow(session)
                    continue  # another event store: start over in it
                except TrackingError as exc:
                    # Tracking is paused (the tracker said so once): wait for it, quietly.
                    if not self._waiting:
                        log.warning("notifications wait: %s", exc)
                    self._waiting = True
                except Exception:
                    # The store could not be read or written (a lock, an I/O error):
                    # notifications wait, delivery does not, and the cursor says where to resume.
                    log.exception("notifications paused: the event store failed; retrying")
                await asyncio.sleep(IDLE_POLL)

    async def _follow(self, session: aiohttp.ClientSession) -> None:
        """Notify every event after the cursor, then each new one, until the tracker opens
        another store (a damaged one set aside): then return, to start over in it. Another
        node sending them: wait a while, and return to try again."""
        tracker = self.tracker
        generation = tracker.generation
        if not await tracker.lead(CURSOR):
            if not self._standby:
                log.info("another node sends the notifications: this one takes over if it stops")
            self._standby = True
            await asyncio.sleep(IDLE_POLL)
            return
        if self._standby:
            log.info("this node sends the notifications now (from where the other stopped)")
        self._standby = False
        position = await tracker.cursor(CURSOR)
        if position < 0:
            # First run with [notify]: start from now, not with the whole history. In a new
            # store that replaced a damaged one, every event is new: start from its first.
            position = 0 if self._generation is not None else await tracker.last_position()
            await tracker.set_cursor(CURSOR, position, generation)
        self._generation = generation
        self._waiting = False
        changed_at = -PENDING_FOR
        while tracker.generation == generation:
            if not await tracker.lead(CURSOR):
                return  # its session was lost: another node may send them now
            tracker.changed.clear()
            batch = await tracker.events_after(position, 100)
            if tracker.generation != generation:
                return  # read from the new store: positions differ
            for event in batch:
                if not self.config.statuses or event.status in self.config.statuses:
                    await self._deliver(session, event)
                    await tracker.set_cursor(CURSOR, event.position, generation)
                position = event.position
            if batch:
                await tracker.set_cursor(CURSOR, position, generation)  # past skipped ones
                continue
            recent = time.monotonic() - changed_at < PENDING_FOR
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    tracker.changed.wait(), PENDING_POLL if recent else IDLE_POLL
                )
                changed_at = time.monotonic()

    async def _deliver(self, session: aiohttp.ClientSession, event: FeedEvent) -> None:
        body = notification_body(event)
        started = time.monotonic()
        delay = FIRST_DELAY
        while True:
            try:
                await self._post(session, body)
                self.sent += 1
                return
            except _Permanent as exc:
                log.warning("notification %s refused by %s: %s; dropped", event.seq, self.url, exc)
                self.dropped += 1
                return
            except Exception as exc:
                waited = time.monotonic() - started
                if waited + delay > self.config.max_age:
                    log.error(
                        "notification %s to %s still failing after %.0fs (%s); dropped",
                        event.seq,
                        self.url,
                        waited,
                        exc,
                    )
                    self.dropped += 1
                    return
                log.warning(
                    "notification %s to %s failed (%s); retrying in %.0fs",
                    event.seq,
                    self.url,
                    exc,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)

    async def _post(self, session: aiohttp.ClientSession, body: bytes) -> None:
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"mqd/{__version__}",
            "X-Mqd-Timestamp": str(timestamp),
            "X-Mqd-Signature": sign(self._secret, timestamp, body),
        }
        async with session.post(self.url, data=body, headers=headers) as response:
            if 200 <= response.status < 300:
                return
            text = (await response.text(errors="replace"))[:200]
            why = f"HTTP {response.status} {text}".strip()
            if 400 <= response.status < 500 and response.status not in (408, 429):
                raise _Permanent(why)
            raise OSError(why)
