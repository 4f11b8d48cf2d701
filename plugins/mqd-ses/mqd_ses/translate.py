"""botocore's exceptions -> mqd's relay errors, in this one place.

The policy: a message bounces only when SES refused *this message* (``MessageRejected``,
``MailFromDomainNotVerifiedException``, ``BadRequestException``, a body too large). Everything
else is deferred and retried by the queue: throttling, SES's own failures, the network, and every
problem the operator can fix (credentials, permissions, a paused or suspended account, a missing
configuration set) — those also log an ERROR that says what to do, and the ones that stop every
message carry a ``retry_after`` so the queue pauses the relay instead of trying each message.
Errors are matched by SES's error code and HTTP status, never by message text.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import botocore.exceptions
from mqd import PermanentRelayError, RelayError, Reply, TransientRelayError

__all__ = ["CLIENT_RESET", "FIX_PAUSE", "SUSPENDED_PAUSE", "Where", "translate"]

log = logging.getLogger("mqd.relay.ses")

#: Pause of the relay when the account cannot send (sending paused, account suspended).
SUSPENDED_PAUSE = 300.0
#: Pause of the relay on a problem only the operator can fix (credentials, permissions, a missing
#: configuration set): long enough not to flood the log, short enough to resume soon after a fix.
FIX_PAUSE = 60.0

_THROTTLING = frozenset(
    {
        "TooManyRequestsException",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "LimitExceededException",
        "RequestLimitExceeded",
        "SlowDown",
    }
)
_SERVICE = frozenset(
    {
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "InternalServiceError",
        "ServiceException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    }
)
_SIGNATURE = frozenset(
    {
        "IncompleteSignature",
        "IncompleteSignatureException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "MissingAuthenticationToken",
        "MissingAuthenticationTokenException",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
    }
)
_EXPIRED = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired"})
_DENIED = frozenset(
    {"AccessDenied", "AccessDeniedException", "NotAuthorized", "UnauthorizedOperation"}
)
_CREDENTIAL_LOOKUP = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.TokenRetrievalError,
    botocore.exceptions.SSOError,
    botocore.exceptions.RefreshWithMFAUnsupportedError,
)
_CONFIGURATION = (
    botocore.exceptions.ProfileNotFound,
    botocore.exceptions.NoRegionError,
    botocore.exceptions.InvalidConfigError,
    botocore.exceptions.ConfigParseError,
)
#: Errors after which the relay drops its client, so that the next attempt looks the
#: credentials and the AWS config up afresh (a client keeps what it found when it was created).
CLIENT_RESET = _CREDENTIAL_LOOKUP + _CONFIGURATION


@dataclass(frozen=True)
class Where:
    """What the error messages name: the relay, its region, profile and configuration set."""

    relay: str
    region: str
    profile: str | None = None
    configuration_set: str | None = None

    def __str__(self) -> str:
        return f"relay {self.relay} (SES {self.region})"


def translate(exc: Exception, where: Where) -> RelayError:
    """The relay error for ``exc`` (a botocore ClientError or BotoCoreError), saying what went
    wrong and what to fix. Operator problems are also logged at ERROR here."""
    if isinstance(exc, RelayError):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        return _client_error(exc.response, where)
    return _botocore_error(exc, where)


def _client_error(response: Mapping[str, Any], where: Where) -> RelayError:
    error = response.get("Error", {})
    metadata = response.get("ResponseMetadata", {})
    code = str(error.get("Code") or "Unknown")
    text = " ".join(str(error.get("Message") or "").split()) or "no message"
    status = int(metadata.get("HTTPStatusCode") or 0)
    said = f"SES answered {status} {code}: {text}"
    retry_after = _retry_after(metadata.get("HTTPHeaders") or {})

    if code == "MessageRejected":
        return PermanentRelayError(f"{where}: {said}", reply=Reply(554, f"{code}: {text}", "5.7.1"))
    if code == "MailFromDomainNotVerifiedException":
        fix = (
            "the custom MAIL FROM domain of the sending identity is not verified: publish its "
            "MX and SPF records (SES console, Identities, Custom MAIL FROM domain) or turn the "
            "custom MAIL FROM domain off"
        )
        log.error("%s: %s. To fix: %s", where, said, fix)
        return PermanentRelayError(
            f"{where}: {said}; {fix}", reply=Reply(550, f"{code}: {text}", "5.7.1")
        )
    if code in ("BadRequestException", "InvalidParameterValue") or (
        status == 400 and code == "ValidationException"
    ):
        return PermanentRelayError(
            f"{where}: SES refused the request for this message ({said})",
            reply=Reply(554, f"{code}: {text}", "5.6.0"),
        )
    if status == 413:
        return PermanentRelayError(
            f"{where}: {said}; the message is larger than SES accepts",
            reply=Reply(552, f"message too large for SES: {text}", "5.3.4"),
        )
    if code in _THROTTLING or status == 429:
        return TransientRelayError(
            f"{where}: SES is throttling ({said}); the message is retried later. If it "
            "persists, the account's sending rate or daily quota is too low: request an "
            "increase in the SES console (Account dashboard)",
            reply=Reply(451, f"throttled by SES: {code}: {text}", "4.4.5"),
            retry_after=retry_after,
        )
    if code == "SendingPausedException":
        scope = "this account"
        if where.configuration_set:
            scope += f" or for the configuration set {where.configuration_set!r}"
        return _operator(
            where,
            said,
            f"email sending is paused for {scope} in {where.region}: look at the reputation "
            "metrics on the SES console's Account dashboard, fix the cause, then resume sending "
            "there (or 'aws sesv2 put-account-sending-attributes --sending-enabled', or the "
            "configuration set's sending option)",
            Reply(451, f"SES sending is paused: {text}", "4.7.0"),
            SUSPENDED_PAUSE,
        )
    if code == "AccountSuspendedException":
        return _operator(
            where,
            said,
            f"SES has suspended email sending for this AWS account in {where.region}: read the "
            "notice on the SES console's Account dashboard and open a case with AWS Support to "
            "get it reinstated. Mail stays queued and bounces only when its queue lifetime ends",
            Reply(451, f"the SES account is suspended: {text}", "4.7.0"),
            SUSPENDED_PAUSE,
        )
    if code == "NotFoundException" or status == 404:
        resource = (
            f"the configuration set {where.configuration_set!r}"
            if where.configuration_set
            else "a resource the request names"
        )
        return _operator(
            where,
            said,
            f"SES cannot find {resource} in {where.region}: create it in the SES console "
            "(Configuration sets), or fix configuration_set / region in the relay's config",
            Reply(451, f"SES resource not found: {text}", "4.3.5"),
            FIX_PAUSE,
        )
    if code in _EXPIRED:
        return _operator(
            where,
            said,
            "the AWS credentials have expired: renew the session token, or give mqd "
            "credentials that refresh themselves (an instance or task role, an SSO or "
            "assume-role profile)",
            Reply(451, f"AWS credentials expired: {code}", "4.7.0"),
            FIX_PAUSE,
        )
    if code in _SIGNATURE:
        return _operator(
            where,
            said,
            "AWS does not accept the credentials: check the access key id and secret key "
            f"mqd uses{_profile(where)}, that the key is active in IAM, and that this "
            "machine's clock is right (request signatures are only valid for a few minutes)",
            Reply(451, f"AWS refused the credentials: {code}", "4.7.0"),
            FIX_PAUSE,
        )
    if code in _DENIED or status == 403:
        return _operator(
            where,
            said,
            "the IAM user or role mqd runs as may not send: allow ses:SendEmail and "
            "ses:SendRawEmail on the sending identity (and the configuration set, when one is "
            "set) in its IAM policy",
            Reply(451, f"AWS denied access: {code}", "4.7.0"),
            FIX_PAUSE,
        )
    if code in _SERVICE or status >= 500:
        return TransientRelayError(
            f"{where}: SES failed ({said}); the message is retried later",
            reply=Reply(451, f"SES failed: {code}: {text}", "4.3.0"),
            retry_after=retry_after,
        )
    log.warning("%s: unexpected answer from SES (%s); deferring the message", where, said)
    return TransientRelayError(
        f"{where}: unexpected answer from SES ({said}); the message is retried later",
        reply=Reply(451, f"SES answered {status} {code}: {text}", "4.3.0"),
    )


def _botocore_error(exc: Exception, where: Where) -> RelayError:
    if isinstance(exc, _CREDENTIAL_LOOKUP):
        return _operator(
            where,
            f"no usable AWS credentials ({exc})",
            "give the mqd service credentials through the standard AWS chain: "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in its environment, a profile in "
            f"~/.aws/credentials or ~/.aws/config of the user it runs as{_profile(where)}, or "
            "an instance, task or pod role",
            Reply(451, "no usable AWS credentials", "4.7.0"),
            FIX_PAUSE,
        )
    if isinstance(exc, _CONFIGURATION):
        return _operator(
            where,
            f"the AWS configuration is unusable ({exc})",
            "fix the AWS config files of the user mqd runs as, or the relay's profile / region",
            Reply(451, "the AWS configuration is unusable", "4.3.5"),
            FIX_PAUSE,
        )
    if isinstance(
        exc, botocore.exceptions.ConnectTimeoutError | botocore.exceptions.ReadTimeoutError
    ):
        return TransientRelayError(
            f"{where}: SES did not answer in time ({exc}); the message is retried later. "
            "Raise connect_timeout / read_timeout if this happens on a slow link",
            reply=Reply(451, "timed out talking to SES", "4.4.2"),
        )
    if isinstance(exc, botocore.exceptions.SSLError):
        return TransientRelayError(
            f"{where}: TLS with the SES endpoint failed ({exc}): check the system's CA "
            "certificates (or AWS_CA_BUNDLE) and any proxy that intercepts TLS",
            reply=Reply(451, "TLS with SES failed", "4.7.5"),
        )
    if isinstance(exc, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError):
        return TransientRelayError(
            f"{where}: cannot reach SES ({exc}); the message is retried later",
            reply=Reply(451, "cannot reach SES", "4.4.1"),
        )
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        log.error("%s: botocore refused the request mqd built (%s): please report it", where, exc)
        return TransientRelayError(
            f"{where}: the request to SES is invalid ({exc})",
            reply=Reply(451, "invalid request to SES", "4.3.0"),
        )
    return TransientRelayError(
        f"{where}: {type(exc).__name__}: {exc}",
        reply=Reply(451, f"SES request failed: {type(exc).__name__}", "4.3.0"),
    )


def _operator(where: Where, what: str, fix: str, reply: Reply, pause: float) -> TransientRelayError:
    """A problem only the operator can fix: deferred, logged loudly, the relay paused."""
    log.error("%s: %s. To fix: %s. Mail stays queued and is retried.", where, what, fix)
    return TransientRelayError(f"{where}: {what}; {fix}", reply=reply, retry_after=pause)


def _profile(where: Where) -> str:
    return f" (profile {where.profile!r})" if where.profile else ""


def _retry_after(headers: Mapping[str, Any]) -> float | None:
    """Seconds from a Retry-After header in seconds form (SES itself does not send one, a proxy
    or an endpoint in front of it may); None without a usable one."""
    value = str(headers.get("retry-after") or "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds <= 86400 else None
