"""SMTP command pipelining (RFC 2920) on aiosmtplib's connection.

aiosmtplib sends a command and waits for its reply before the next, and drops a reply that
arrives while no command waits for one, so it cannot send a group of commands in one write. A
server that offers PIPELINING takes MAIL, every RCPT and DATA in one write and answers them in
order: two round trips per message (the group, then the body) instead of three plus one per
recipient, which matters most on a distant relay and saves event-loop turns on a near one.

``PipeliningProtocol`` is aiosmtplib's protocol with ``execute_group`` and ``send_data`` added,
and ``data_received`` and ``read_response`` taught to keep the replies of a group that arrive
early; outside a group it answers as aiosmtplib's own. aiosmtplib builds its protocol inside a
private method with no factory to pass, so ``enable_pipelining`` gives the connected protocol
this class (it adds methods and a class attribute only, no state the instance would lack).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiosmtplib
from aiosmtplib.errors import SMTPReadTimeoutError, SMTPResponseException
from aiosmtplib.protocol import (
    COMMAND_INJECTION_REGEX,
    MAX_RESPONSE_LENGTH,
    PERIOD_REGEX,
    SMTPProtocol,
    normalize_message_line_endings,
)
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import SMTPStatus

__all__ = ["PipeliningProtocol", "enable_pipelining", "wire_data"]

#: The reply with which a server says it is closing the connection: no reply follows it.
CLOSING = 421
#: aiosmtplib's private state this module works with (5.1.x). If a release renames any of it,
#: connections go one command at a time instead of failing (tests/test_pipelining.py checks).
RELIED_ON = (
    "_buffer",
    "_command_lock",
    "_loop",
    "_read_response_from_buffer",
    "_response_pending",
    "_response_waiter",
    "_set_response_exception",
    "transport",
)


class PipeliningProtocol(SMTPProtocol):
    #: While a group's replies are read: a reply that arrives before the one before it is taken
    #: is kept in the buffer (aiosmtplib would drop it) and taken by the next read_response.
    _in_group = False
    #: How many commands the group being read has.
    _group_size = 1

    async def execute_group(
        self,
        commands: Sequence[Sequence[bytes]],
        timeout: float | None = None,  # noqa: ASYNC109 - per reply, as aiosmtplib's commands
    ) -> list[SMTPResponse]:
        """Send ``commands`` (each a command's words) in one write and return their replies
        in order. Fewer replies than commands only when one was 421: the server is closing."""
        for words in commands:
            for word in words:
                if COMMAND_INJECTION_REGEX.search(word):
                    raise ValueError("Command arg contains a prohibited control character")
        if self._command_lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        data = b"".join(b" ".join(words) + b"\r\n" for words in commands)
        replies: list[SMTPResponse] = []
        async with self._command_lock:
            self._in_group, self._group_size = True, len(commands)
            try:
                self._response_pending = True
                self.write(data)
                for _ in commands:
                    reply = await self.read_response(timeout=timeout)
                    replies.append(reply)
                    if reply.code == CLOSING:
                        break
            finally:
                self._in_group = False
        return replies

    async def send_data(
        self,
        message: bytes | None,
        timeout: float | None = None,  # noqa: ASYNC109 - as aiosmtplib's data()
    ) -> SMTPResponse:
        """After a 354 to a pipelined DATA: the message, dot-stuffed and ended with a lone dot,
        and the server's reply. ``None`` ends the data with nothing in it (RFC 2920 3.1: DATA
        accepted although no recipient was)."""
        payload = b".\r\n" if message is None else wire_data(message)
        if self._command_lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        async with self._command_lock:
            self._response_pending = True
            self.write(payload)
            return await self.read_response(timeout=timeout)

    def data_received(self, data: bytes) -> None:
        if not self._in_group:
            super().data_received(data)
            return
        # A group's replies may all be here at once, more than aiosmtplib's bound for one reply
        # (1,500 RCPT replies are ~40 KB): the bound is one reply's per command of the group.
        waiter = self._response_waiter
        if waiter is None:  # the connection is gone
            return
        self._buffer.extend(data)
        if len(self._buffer) > MAX_RESPONSE_LENGTH * self._group_size:
            # Endless replies: the same error as aiosmtplib's, and the connection is dropped
            # (a later read of the group sees it lost).
            del self._buffer[:]
            if not waiter.done():
                self._set_response_exception(
                    waiter,
                    SMTPResponseException(SMTPStatus.invalid_response.value, "Response too long"),
                )
            if self.transport is not None:
                self.transport.close()
            return
        if self._response_pending and not waiter.done():
            self._take_buffered_reply()

    async def read_response(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - aiosmtplib's signature
    ) -> SMTPResponse:
        """aiosmtplib's read_response, cheaper: a reply already here (the rest of a group's
        replies, which arrive together) is taken without waiting, and the timeout is one timer
        that fails the wait, rather than wait_for's extra future and two extra event-loop turns
        (or asyncio.timeout's cancellation machinery, twice the cost of the timer)."""
        if self._response_waiter is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._response_pending = True
        if self._in_group and self._buffer:
            self._take_buffered_reply()
        waiter = self._response_waiter
        try:
            if waiter.done():
                return waiter.result()
            if timeout is None:
                return await waiter
            timer = self._loop.call_later(timeout, _time_out, waiter)
            try:
                return await waiter
            finally:
                timer.cancel()
        finally:
            self._response_pending = False
            # as aiosmtplib: a fresh waiter for the next reply, none once disconnected
            self._response_waiter = None if self.transport is None else self._loop.create_future()

    def _take_buffered_reply(self) -> None:
        waiter = self._response_waiter
        if waiter is None or waiter.done():
            return
        try:
            response = self._read_response_from_buffer()
        except Exception as exc:  # a malformed reply: the same error aiosmtplib would give
            self._set_response_exception(waiter, exc)
        else:
            if response is not None:
                waiter.set_result(response)


def _time_out(waiter: asyncio.Future[SMTPResponse]) -> None:
    if not waiter.done():
        waiter.set_exception(SMTPReadTimeoutError("Timed out waiting for server response"))


def wire_data(message: bytes) -> bytes:
    """The message as DATA carries it: every line ended by CRLF, a leading dot doubled, and
    the lone dot after it; what aiosmtplib sends. Its two regular expressions are a tenth of
    the relay's CPU for a 2 KB message, so they run only when nothing cheaper does the same."""
    crlf = message.count(b"\r\n")
    if message.count(b"\r") != crlf:
        message = normalize_message_line_endings(message)  # a bare CR
    else:
        if message.count(b"\n") != crlf:  # bare LFs (files written on Unix): bytes.replace is
            # several times faster than the regular expression
            message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not message.endswith(b"\r\n"):
            message += b"\r\n"
    if message.startswith(b".") or b"\n." in message:
        message = PERIOD_REGEX.sub(b"..", message)
    return message + b".\r\n"


def enable_pipelining(client: aiosmtplib.SMTP) -> PipeliningProtocol | None:
    """The connected client's protocol, able to pipeline, when the server offers PIPELINING
    (after EHLO); None otherwise, and then commands go one at a time."""
    protocol = client.protocol
    if protocol is None or not client.supports_extension("pipelining"):
        return None
    if type(protocol) is SMTPProtocol and all(hasattr(protocol, name) for name in RELIED_ON):
        protocol.__class__ = PipeliningProtocol
    return protocol if isinstance(protocol, PipeliningProtocol) else None
