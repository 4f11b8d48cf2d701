"""A RabbitMQ mailbox (``[[mailbox]]``): a consumer of one AMQP queue that applications publish
their messages to, handing each over to mqd's queue.

Manual acks, ``prefetch`` deliveries ahead. A delivery is acked only once its message is
durable in the queue with its AMQP message_id (``HandOver.submit_once``: the queue store keeps
the id with the entry, for every node of the queue): a redelivery of that id, to any node, is
acked and queues nothing; the same message_id with another message is not a redelivery, and is
dead-lettered saying so (acking it would lose that message). A malformed message or one the
policy
refuses is rejected without requeue (to the queue's dead-letter exchange, when it has one),
logged and recorded as a ``rejected`` event; when the store cannot take it now it is nacked
back to the queue and the consumer pauses (from 1s, doubling to ``reconnect_max``) so nothing
is lost and nothing spins. The connection is retried with the same backoff; that the broker is
down is said once, and that it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import logging
from typing import TYPE_CHECKING, Any

from mqd.config.schema import Config, SourceConfig
from mqd.errors import ConfigError, MessageParseError, SubmissionError
from mqd.faults import Fault
from mqd.intake.mailbox.envelope import submission_of
from mqd.intake.mailbox.settings import MailboxSettings
from mqd.intake.source import HandOver, Source, SourceStatus, Submission

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

__all__ = ["MailboxSource"]

log = logging.getLogger("mqd.mailbox")

#: How long ``stop`` waits for the hand-overs under way to be answered (acked or nacked).
STOP_TIMEOUT = 10.0
#: How long connecting (TCP, AMQP handshake, channel, queue) may take.
CONNECT_TIMEOUT = 15.0


def _quiet_amqp() -> None:
    """aiormq logs a lost connection as an ERROR with its traceback, at each loss: the mailbox
    says it once itself (``Fault``), and when it is back."""
    logger = logging.getLogger("aiormq.connection")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.CRITICAL)


class MailboxSource(Source):
    """A ``[[mailbox]]`` table: one AMQP connection, channel and consumer."""

    def __init__(self, config: SourceConfig, app: Config, handover: HandOver) -> None:
        super().__init__(config, app, handover)
        if importlib.util.find_spec("aio_pika") is None:
            raise ConfigError(
                "needs aio-pika (mqd's 'mailbox' extra): pip install aio-pika into mqd's "
                "environment",
                path=app.source,
                key=config.name,
            )
        self.settings = MailboxSettings.read(config, app)
        _quiet_amqp()
        self.connected = False
        #: Why the broker cannot be had (or the consumer is paused), while it cannot.
        self.last_error: str | None = None
        self.broker = Fault(
            f"{config.name} ({self.settings.where})",
            log,
            most=self.settings.reconnect_max,
            verb="cannot consume",
        )
        #: Redeliveries of a message_id queued before, acked without queueing.
        self.duplicates = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._paused: asyncio.Event | None = None
        self._pause_for = 1.0
        self._busy = 0
        self._idle: asyncio.Event | None = None

    # -- the Source contract --------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping, self._paused, self._idle = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._idle.set()
        self._task = asyncio.create_task(self._run(), name=f"mqd-{self.config.name}")
        log.info("%s connecting to %s", self.config.name, self.settings.where)

    async def stop(self) -> None:
        if self._task is None or self._stopping is None:
            return
        self._stopping.set()
        if not self.connected:
            self._task.cancel()  # connecting, or waiting to: nothing to answer
        try:
            await asyncio.wait_for(self._task, STOP_TIMEOUT + CONNECT_TIMEOUT)
        except (asyncio.CancelledError, TimeoutError):
            pass
        finally:
            self._task = None
        await self._drain()  # hand-overs of a connection lost meanwhile end before the queue

    def status(self) -> SourceStatus:
        return SourceStatus(
            name=self.config.name,
            kind=self.config.kind,
            listening=(self.settings.where,),
            connections=1 if self.connected else 0,
            accepted=self.accepted,
            refused=self.refused,
            connected=self.connected,
            last_error=self.last_error,
        )

    # -- the connection -------------------------------------------------------------------------

    async def _run(self) -> None:
        from aio_pika.exceptions import AMQPError  # imported only by a daemon with a mailbox

        assert self._stopping is not None
        while not self._stopping.is_set():
            try:
                await self._session()
            except (AMQPError, OSError, ConnectionError, TimeoutError) as exc:
                self._down(_reason(exc))
            except Exception as exc:  # a bug of ours or the library's: retried all the same
                log.exception("%s: the consumer failed", self.config.name)
                self._down(_reason(exc))
            else:
                continue  # stopping, or the consumer paused and came back
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.broker.retry_in())

    def _down(self, why: str) -> None:
        self.connected = False
        self.last_error = why
        self.broker.failed(why)

    async def _session(self) -> None:
        """One connection: consume until it is lost (raises) or the source stops."""
        import aio_pika

        assert self._stopping is not None and self._paused is not None
        settings = self.settings
        connection = await asyncio.wait_for(
            aio_pika.connect(
                settings.connect_url(),
                timeout=CONNECT_TIMEOUT,
                # The connection's name on the broker (rabbitmqctl list_connections).
                name=f"mqd {self.config.name} {settings.queue}",
                heartbeat=settings.heartbeat,
            ),
            CONNECT_TIMEOUT,
        )
        lost = asyncio.Event()
        why: list[BaseException | None] = []

        def closed(_sender: Any, exc: BaseException | None = None) -> None:
            why.append(exc)
            lost.set()

        try:
            connection.close_callbacks.add(closed)
            channel = await connection.channel(publisher_confirms=False)
            channel.close_callbacks.add(closed)
            await channel.set_qos(prefetch_count=settings.prefetch)
            queue = await channel.get_queue(settings.queue, ensure=True)
            tag = await queue.consume(self._on_message, no_ack=False)
            self.connected, self.last_error = True, None
            if not self.broker.active:
                log.info("%s connected: consuming %s", self.config.name, settings.where)
            self.broker.cleared()  # "resumed" after a failure
            while True:
                stop = asyncio.create_task(self._stopping.wait())
                pause = asyncio.create_task(self._paused.wait())
                gone = asyncio.create_task(lost.wait())
                await asyncio.wait({stop, pause, gone}, return_when=asyncio.FIRST_COMPLETED)
                for task in (stop, pause, gone):
                    task.cancel()
                if lost.is_set():
                    raise ConnectionError(_reason(why[0]) if why else "the connection closed")
                if tag:
                    await queue.cancel(tag)
                if self._stopping.is_set():
                    await self._drain()
                    return
                tag = await self._pause(queue, lost)
        finally:
            self.connected = False
            if not connection.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), 5)

    async def _drain(self) -> None:
        """Wait (at most STOP_TIMEOUT) for the deliveries under way to be answered."""
        assert self._idle is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), STOP_TIMEOUT)

    async def _pause(self, queue: AbstractQueue, lost: asyncio.Event) -> str:
        """The store cannot take messages: consume nothing for a while (the deliveries it
        could not take went back to the queue), then consume again."""
        assert self._stopping is not None and self._paused is not None
        delay = self._pause_for
        self._pause_for = min(delay * 2, self.settings.reconnect_max)
        # The store's fault is said once by the hand-over ("queueing from the sources"):
        # the first pause since a message was queued is said here, the next ones only at DEBUG.
        log.log(
            logging.WARNING if delay == 1.0 else logging.DEBUG,
            "%s: the queue cannot take messages; its deliveries went back to the broker; "
            "consuming again in %gs (then less often)",
            self.config.name,
            delay,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        self._paused.clear()
        if lost.is_set() or self._stopping.is_set():
            return ""  # the loop above sees why
        return await queue.consume(self._on_message, no_ack=False)

    # -- one delivery ---------------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        assert self._idle is not None
        self._busy += 1
        self._idle.clear()
        try:
            await self._handle(message)
        except Exception as exc:  # the ack/nack could not be sent: the broker redelivers
            log.info(
                "%s: delivery %s not answered (%s); the broker delivers it again",
                self.config.name,
                message.message_id or message.delivery_tag,
                _reason(exc),
            )
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        mid = message.message_id
        submission: Submission | None = None
        fingerprint = ""
        try:
            submission = submission_of(message.body, message.headers or {}, message.app_id)
            if mid:
                fingerprint = _fingerprint(submission)
                handed = await self.handover.submit_once(
                    self.config,
                    submission,
                    mid,
                    scope=f"mailbox.{self.settings.key}",
                    keep_for=self.settings.dedup_window,
                    note=fingerprint,
                )
                queue_id, repeat = handed.id, handed.replayed
                # (a key carried over from an older mqd has no note: taken as a redelivery)
                if repeat and handed.note and handed.note != fingerprint:
                    reason = (
                        f"the message_id {mid!r} was used for another message (queued as "
                        f"{queue_id}): give each message its own message_id"
                    )
                    await self._reject(message, mid, "intake", reason, submission)
                    return
            else:
                queue_id, repeat = await self.handover.submit(self.config, submission), False
        except MessageParseError as exc:
            await self._reject(message, mid, "intake", str(exc), submission)
            return
        except SubmissionError as exc:
            # An account over its limits with over_limit = "refuse" is refused as a spool
            # refuses it: held, it would fill the prefetch window and stall the other senders.
            if exc.permanent or exc.stage == "limit":
                await self._reject(message, mid, exc.stage, exc.reason, submission)
                return
            await message.nack(requeue=True)
            assert self._paused is not None
            self._paused.set()
            return
        self._pause_for = 1.0
        await message.ack()
        if repeat:
            log.info(
                "%s: message_id %s was queued before (%s): acked", self.config.name, mid, queue_id
            )
            self.duplicates += 1
            return
        self.accepted += 1
        log.debug("%s: message_id %s acked as %s", self.config.name, mid, queue_id)

    async def _reject(
        self,
        message: AbstractIncomingMessage,
        mid: str | None,
        stage: str,
        reason: str,
        submission: Submission | None,
    ) -> None:
        name = mid or f"delivery-{message.delivery_tag}"
        await message.reject(requeue=False)
        self.refused += 1
        queue_id = self.handover.rejected(
            self.config,
            stage=stage,
            reason=reason,
            name=name,
            sender=submission.sender if submission else None,
            recipients=submission.recipients if submission else (),
        )
        log.warning(
            "%s rejected message_id=%s source=%s: %s (to the queue's dead-letter exchange, "
            "if it has one)",
            queue_id,
            name,
            self.config.name,
            reason,
        )


def _fingerprint(submission: Submission) -> str:
    """A hash of the delivery's envelope and message: a redelivery has the same."""
    digest = hashlib.sha256()
    for part in (submission.sender, *submission.recipients):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    digest.update(submission.data)
    return digest.hexdigest()[:32]


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "the connection closed"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text
