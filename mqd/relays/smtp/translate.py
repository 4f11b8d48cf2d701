"""The one seam where what went wrong below the relay becomes a relay error.

aiosmtplib's exceptions, socket and TLS errors and OAuth2 token errors become a
``TransientRelayError`` or ``PermanentRelayError`` whose message says what went wrong and what to
fix, and whose reply classifies as intended (``mqd.message.classify``). A ``RelayError`` passes
through unchanged. Login failures are transient: the mail waits while the config is fixed.
"""

from __future__ import annotations

import ssl

import aiosmtplib

from mqd.errors import PermanentRelayError, RelayError, TransientRelayError
from mqd.message.reply import Reply
from mqd.relays.smtp.oauth2.source import TokenError
from mqd.relays.smtp.settings import SMTPSettings

__all__ = ["translate"]


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
        return TransientRelayError(
            f"{where} refused the login for {s.username!r} ({exc.code} {exc.message}): check "
            "username and the password file; mail is kept and retried",
            reply=Reply.parse(exc.code, exc.message),
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
            f"{where} did not answer in time ({exc})", reply=Reply(451, "timed out", "4.4.2")
        )
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return TransientRelayError(
            f"{where} closed the connection ({exc})", reply=Reply(451, "connection lost", "4.4.2")
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        # A refused greeting, EHLO or STARTTLS: the relay as a whole is unusable right now.
        reply = Reply.parse(exc.code, exc.message)
        return TransientRelayError(f"{where} answered {reply}", reply=reply)
    if isinstance(exc, aiosmtplib.SMTPConnectError | ConnectionError | OSError):
        return TransientRelayError(
            f"cannot connect to {where}: {exc}", reply=Reply(451, "cannot connect", "4.4.1")
        )
    if isinstance(exc, aiosmtplib.SMTPNotSupported) or (
        isinstance(exc, aiosmtplib.SMTPException) and "STARTTLS" in str(exc)
    ):
        return TransientRelayError(
            f'{where}: {exc}; mqd will not fall back to clear text (security = "{s.security}")',
            reply=Reply(451, "the server does not offer STARTTLS", "4.7.0"),
        )
    if isinstance(exc, ValueError):
        return PermanentRelayError(
            f"an address cannot be sent safely: {exc}",
            reply=Reply(553, "invalid address", "5.1.3"),
        )
    return TransientRelayError(f"{where}: {exc}", reply=Reply(451, str(exc), "4.3.0"))
