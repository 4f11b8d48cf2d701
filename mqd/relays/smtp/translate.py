"""The one seam where what went wrong below the relay becomes a relay error.

aiosmtplib's exceptions, socket and TLS errors and OAuth2 token errors become a
``TransientRelayError`` or ``PermanentRelayError`` whose message says what went wrong and what to
fix, and whose reply classifies as intended (``mqd.message.classify``). A ``RelayError`` passes
through unchanged. Login failures are transient: the mail waits while the config is fixed.

Nothing here is permanent: a permanent failure is the server's 5xx, or a relay error raised on
purpose (an address that cannot be written, a message larger than the server takes). Any other
exception (a ValueError or TypeError from a bug in mqd or aiosmtplib) says nothing about the
message, so it is logged with its traceback and becomes a transient 451 4.3.0: the mail is kept
and retried, never bounced.
"""

from __future__ import annotations

import logging
import os
import ssl

import aiosmtplib

from mqd.errors import RelayError, TransientRelayError
from mqd.message.reply import Reply
from mqd.relays.smtp.oauth2.source import TokenError
from mqd.relays.smtp.settings import SMTPSettings

__all__ = ["translate"]

log = logging.getLogger("mqd.relay.smtp")


def translate(exc: BaseException, s: SMTPSettings, relay: str) -> RelayError:
    """``exc``, raised while relay ``relay`` worked with ``s.host``, as a relay error."""
    where = f"{s.host}:{s.port}"
    if isinstance(exc, RelayError):
        return exc
    if isinstance(exc, TokenError):
        message = (
            f"relay {relay}: no OAuth2 access token for the mailbox {s.username!r}: {exc}; "
            "mail is kept and retried"
        )
        return TransientRelayError(message, reply=Reply(454, message, "4.7.0"))
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError) and s.oauth2 is not None:
        message = (
            f"relay {relay}: {where} refused XOAUTH2 for the mailbox {s.username!r} "
            f"({exc.code} {' '.join(exc.message.split())}), with a freshly fetched token too. "
            "Check that username is the mailbox the token is for; that the app has the SMTP "
            "permission with admin or user consent (Microsoft 365: SMTP.SendAsApp for client "
            "credentials, SMTP.Send for a user's refresh token; Gmail: the "
            "https://mail.google.com/ scope) and that scope asks for it; and for Microsoft 365 "
            "that SMTP AUTH is enabled for the mailbox "
            "(Set-CASMailbox <mailbox> -SmtpClientAuthenticationDisabled $false) "
            "and the app's service principal has access to it. Mail is kept and retried"
        )
        return TransientRelayError(message, reply=Reply(454, message, "4.7.0"))
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # The server's 535 5.7.8 would bounce the mail; a wrong password is the operator's to
        # fix, so the mail waits under the transient twin, 454 4.7.8 (RFC 4954, RFC 3463 X.7.8
        # "authentication credentials invalid"), with the server's own words inside.
        said = f"{exc.code} {' '.join(exc.message.split())}"
        return TransientRelayError(
            f"{where} refused the login for {s.username!r} ({said}): authentication "
            "credentials invalid; check username and the password file; mail is kept and "
            "retried",
            reply=Reply(454, f"{where} refused the login for {s.username!r} ({said})", "4.7.8"),
        )
    if isinstance(exc, ssl.SSLCertVerificationError) or isinstance(
        exc.__cause__, ssl.SSLCertVerificationError
    ):
        return TransientRelayError(
            f"{where}: TLS certificate verification failed ({exc}); fix the server's "
            "certificate or name its CA in tls_ca_file",
            reply=Reply(451, "TLS certificate verification failed", "4.7.5"),
        )
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return TransientRelayError(
            f"{where} did not answer in time ({exc})",
            reply=Reply(451, f"{where} did not answer in time", "4.4.2"),
        )
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return TransientRelayError(
            f"{where} closed the connection ({exc})",
            reply=Reply(451, f"{where} closed the connection", "4.4.2"),
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        # A refused greeting, EHLO or STARTTLS: the relay as a whole is unusable right now.
        reply = Reply.parse(exc.code, exc.message)
        return TransientRelayError(f"{where} answered {reply}", reply=reply)
    if isinstance(exc, aiosmtplib.SMTPConnectError | ConnectionError | OSError):
        # The reply carries the cause as Postfix's does ("connect to host:25: Connection
        # refused"): it is what `mqd queue list`, the web view and a bounce show.
        return TransientRelayError(
            f"cannot connect to {where}: {exc}",
            reply=Reply(451, f"cannot connect to {where}: {_os_cause(exc)}", "4.4.1"),
        )
    if isinstance(exc, aiosmtplib.SMTPNotSupported) or (
        isinstance(exc, aiosmtplib.SMTPException) and "STARTTLS" in str(exc)
    ):
        return TransientRelayError(
            f'{where}: {exc}; mqd will not fall back to clear text (security = "{s.security}")',
            reply=Reply(451, "the server does not offer STARTTLS", "4.7.0"),
        )
    if isinstance(exc, aiosmtplib.SMTPException):
        return TransientRelayError(f"{where}: {exc}", reply=Reply(451, str(exc), "4.3.0"))
    # Not the server's answer, not the network: a bug (mqd's or aiosmtplib's), never the mail's.
    log.error("relay %s: unexpected error talking to %s (a bug?)", relay, where, exc_info=exc)
    what = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return TransientRelayError(
        f"relay {relay}: unexpected {what} while talking to {where} (a bug?); mail is kept and "
        "retried",
        reply=Reply(451, f"local error in the SMTP relay, {what} (a bug?)", "4.3.0"),
    )


def _os_cause(exc: BaseException) -> str:
    """The operating system's words for why a connection failed: "Connection refused"."""
    err: BaseException | None = exc
    # aiosmtplib's SMTPConnectError is an OSError without an errno; the socket's error is its
    # cause.
    while err is not None and not (isinstance(err, OSError) and err.errno is not None):
        err = err.__cause__ or err.__context__
    if not isinstance(err, OSError):
        return " ".join(str(exc).split())
    if err.errno is not None and err.errno > 0:
        # asyncio words a refusal "Connect call failed ('127.0.0.1', 25)"; the errno says it.
        return os.strerror(err.errno)
    return err.strerror or " ".join(str(err).split())
