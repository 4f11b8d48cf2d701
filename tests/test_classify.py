"""Unit tests for mqd.message.classify and the Reply type it reads."""

from __future__ import annotations

import pytest

from mqd.errors import PermanentRelayError, RelayError, TransientRelayError
from mqd.message.classify import classify_reply, reply_for_error
from mqd.message.reply import Outcome, Reply
from mqd.relays.base import DeliveryResult

D, T, P = Outcome.DELIVERED, Outcome.TRANSIENT, Outcome.PERMANENT


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        # basic code classes
        (Reply(250, "OK"), D),
        (Reply(251, "User not local; will forward"), D),
        (Reply(200), D),
        (Reply(299), D),
        (Reply(421, "Service not available"), T),
        (Reply(450, "Mailbox busy"), T),
        (Reply(451, "Local error"), T),
        (Reply(452, "Insufficient storage"), T),
        (Reply(500, "Syntax error"), P),
        (Reply(550, "No such user"), P),
        (Reply(552, "Too big"), P),
        (Reply(554, "Transaction failed"), P),
        # enhanced status codes that agree with the code
        (Reply(250, "OK", "2.0.0"), D),
        (Reply(451, "greylisted", "4.7.1"), T),
        (Reply(550, "No such user", "5.1.1"), P),
        # the basic code decides when the enhanced status code's class disagrees
        (Reply(550, "try later", "4.2.2"), P),
        (Reply(450, "never", "5.7.1"), T),
        (Reply(250, "but rejected", "5.7.1"), D),
        (Reply(250, "queued but deferred", "4.4.1"), D),
        (Reply(451, "odd", "2.0.0"), T),
        # anything unexpected is transient: delay rather than bounce
        (Reply(354, "Start mail input"), T),
        (Reply(334, "VXNlcm5hbWU6"), T),
        (Reply(100), T),
        (Reply(199), T),
        (Reply(0, "garbage"), T),
        (Reply(-1, "no code"), T),
        (Reply(600, "beyond"), T),
        (Reply(999, "garbage"), T),
        (Reply(9999, "garbage"), T),
        (Reply(55, "two digits"), T),
    ],
    ids=lambda value: str(value) if isinstance(value, Reply) else None,
)
def test_classify_reply(reply, outcome):
    assert classify_reply(reply) is outcome


@pytest.mark.parametrize(
    ("code", "text", "outcome"),
    [
        (250, "2.0.0 Ok: queued as 12345", D),
        (250, "Ok: queued", D),
        (550, "5.1.1 <bob@example.net>: Recipient address rejected", P),
        (550, "4.7.1 please try again later", P),  # the code decides
        (450, "4.2.0 greylisted", T),
        (421, "4.7.0 Too many connections\n4.7.0 try later", T),
        (550, "mailbox unavailable 4.2.2", P),  # not at the start: not an enhanced code
        (503, "5.5.1 Error: need RCPT command", P),
        (354, "End data with <CR><LF>.<CR><LF>", T),
    ],
)
def test_classify_parsed_replies(code, text, outcome):
    assert classify_reply(Reply.parse(code, text)) is outcome


def test_classification_ignores_message_text():
    assert classify_reply(Reply(550, "temporary failure, try again later")) is P
    assert classify_reply(Reply(451, "permanent: user unknown, do not retry")) is T
    assert classify_reply(Reply(250, "rejected")) is D


# -- Reply.parse -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "enhanced", "message"),
    [
        (550, "5.1.1 User unknown", "5.1.1", "User unknown"),
        (250, "2.0.0 OK", "2.0.0", "OK"),
        (451, "4.7.1 Greylisted, see http://x.test/", "4.7.1", "Greylisted, see http://x.test/"),
        (421, "4.7.0", "4.7.0", ""),
        (550, "5.7.26 Unauthenticated email", "5.7.26", "Unauthenticated email"),
        (550, "5.123.456 three digits each", "5.123.456", "three digits each"),
        (250, "   2.1.5   Ok  ", "2.1.5", "Ok"),
        (
            250,
            "2.0.0 first line\n2.0.0 second line",
            "2.0.0",
            "first line 2.0.0 second line",
        ),
        (550, "User unknown", None, "User unknown"),
        (550, "", None, ""),
        (550, "5.1.1User unknown", None, "5.1.1User unknown"),  # no word boundary
        (550, "6.1.1 not a class", None, "6.1.1 not a class"),
        (550, "3.1.1 not a class", None, "3.1.1 not a class"),
        (550, "5.1 too short", None, "5.1 too short"),
        (550, "5.1234.1 subject too long", None, "5.1234.1 subject too long"),
        (550, "5.1.1234 detail too long", None, "5.1.1234 detail too long"),
        (550, "user 5.1.1 later in the text", None, "user 5.1.1 later in the text"),
    ],
)
def test_reply_parse(code, text, enhanced, message):
    reply = Reply.parse(code, text)
    assert reply.code == code
    assert reply.enhanced == enhanced
    assert reply.message == message


def test_reply_parse_collapses_whitespace_to_one_line():
    reply = Reply.parse(554, "5.7.1 line one\r\n  line two\tthree")
    assert reply.message == "line one line two three"
    assert "\n" not in str(reply) and "\r" not in str(reply)


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (Reply(250), "2.0.0"),
        (Reply(451), "4.0.0"),
        (Reply(550), "5.0.0"),
        (Reply(550, "", "5.1.1"), "5.1.1"),
        (Reply(550, "", "4.2.2"), "5.2.2"),  # the class follows the code that decided
        (Reply(451, "", "5.7.1"), "4.7.1"),
        (Reply(354), "4.0.0"),
        (Reply(0), "4.0.0"),
    ],
)
def test_reply_status(reply, status):
    assert reply.status == status


@pytest.mark.parametrize(
    ("reply", "text"),
    [
        (Reply(250), "250"),
        (Reply(250, "OK"), "250 OK"),
        (Reply(550, "User unknown", "5.1.1"), "550 5.1.1 User unknown"),
        (Reply(421, "", "4.7.0"), "421 4.7.0"),
    ],
)
def test_reply_str(reply, text):
    assert str(reply) == text


def test_reply_str_of_parse_keeps_the_enhanced_code():
    assert str(Reply.parse(550, "5.1.1 User unknown")) == "550 5.1.1 User unknown"


def test_delivery_result_all():
    reply = Reply(250, "OK", "2.0.0")
    result = DeliveryResult.all(("a@x.test", "b@x.test"), reply, remote="mx.x.test")
    assert dict(result.replies) == {"a@x.test": reply, "b@x.test": reply}
    assert result.remote == "mx.x.test"


# -- reply_for_error -------------------------------------------------------------------------------


def test_reply_for_error_keeps_a_matching_transient_reply():
    own = Reply(421, "too busy", "4.7.0")
    assert reply_for_error(TransientRelayError("busy", reply=own)) is own


def test_reply_for_error_keeps_a_matching_permanent_reply():
    own = Reply(552, "too big", "5.3.4")
    assert reply_for_error(PermanentRelayError("big", reply=own)) is own


@pytest.mark.parametrize(
    ("error", "code", "enhanced", "outcome"),
    [
        (TransientRelayError("connection refused"), 451, "4.4.1", T),
        (PermanentRelayError("address cannot be sent"), 554, "5.0.0", P),
        # a reply that would classify differently from the error's kind is replaced
        (TransientRelayError("odd", reply=Reply(550, "no", "5.1.1")), 451, "4.4.1", T),
        (TransientRelayError("odd", reply=Reply(250, "ok")), 451, "4.4.1", T),
        (PermanentRelayError("odd", reply=Reply(451, "later")), 554, "5.0.0", P),
        # a plain RelayError is treated as transient
        (RelayError("unknown kind"), 451, "4.4.1", T),
    ],
)
def test_reply_for_error_makes_up_a_matching_reply(error, code, enhanced, outcome):
    reply = reply_for_error(error)
    assert (reply.code, reply.enhanced) == (code, enhanced)
    assert reply.message == str(error)
    assert classify_reply(reply) is outcome
