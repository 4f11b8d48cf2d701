"""Reply -> outcome, in one place, by code and enhanced status code (never by message text)."""

from __future__ import annotations

from mqd.errors import PermanentRelayError, RelayError
from mqd.message.reply import Outcome, Reply

__all__ = ["classify_reply", "reply_for_error"]


def classify_reply(reply: Reply) -> Outcome:
    """2xx delivered, 4xx transient, 5xx permanent, by the basic reply code.

    The enhanced status code (RFC 3463) adds detail but never overrides the code: the code is
    what the SMTP transaction means (a 250 has committed the message whatever follows it), and
    a server whose two classes disagree is confused. Anything unexpected (1xx, 3xx, garbage) is
    transient, so a confused server delays mail rather than bouncing it.
    """
    klass = reply.code // 100
    if klass == 2:
        return Outcome.DELIVERED
    if klass == 5:
        return Outcome.PERMANENT
    return Outcome.TRANSIENT


def reply_for_error(exc: RelayError) -> Reply:
    """The reply to record for a whole-message failure: the error's own, or one made up to match
    its kind (451 4.4.1 for transient, 554 5.0.0 for permanent) so that it classifies the same."""
    if exc.reply is not None and classify_reply(exc.reply) is _outcome_of(exc):
        return exc.reply
    if isinstance(exc, PermanentRelayError):
        return Reply(554, str(exc), "5.0.0")
    return Reply(451, str(exc), "4.4.1")


def _outcome_of(exc: RelayError) -> Outcome:
    return Outcome.PERMANENT if isinstance(exc, PermanentRelayError) else Outcome.TRANSIENT
