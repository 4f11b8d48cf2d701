"""The SMTP relay's fast MAIL/RCPT path (for speed) says on the wire what aiosmtplib's own
mail()/rcpt() would have said, and leaves every other address to them."""

from __future__ import annotations

import pytest
from aiosmtplib.email import quote_address
from corehelpers import make_message
from hypothesis import given, settings
from hypothesis import strategies as st
from smtpserver import SMTPPeer

from mqd.config.options import Options
from mqd.errors import PermanentRelayError
from mqd.message.envelope import Envelope
from mqd.relays.smtp.relay import SMTPRelay
from mqd.relays.smtp.wire import PLAIN_ADDRESS

atoms = st.text(alphabet="abcXYZ019!#$%&'*+-/=?^_`{|}~", min_size=1, max_size=5)
dot_atoms = st.lists(atoms, min_size=1, max_size=3).map(".".join)


@settings(max_examples=500, deadline=None)
@given(dot_atoms, dot_atoms)
def test_a_plain_address_is_what_aiosmtplib_would_send(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    assert PLAIN_ADDRESS.fullmatch(address)
    assert quote_address(address) == f"<{address}>"


@pytest.mark.parametrize(
    "address",
    ['"a b"@example.net', "a(comment)@example.net", "j\u00f6rg@example.de", "a..b@x.y", "a@b."],
)
def test_other_addresses_take_aiosmtplibs_path(address: str) -> None:
    assert not PLAIN_ADDRESS.fullmatch(address)


def relay(peer: SMTPPeer) -> SMTPRelay:
    opts = Options(
        {"host": "127.0.0.1", "port": peer.port, "security": "none", "command_timeout": "5s"},
        section="relays.x",
        path=None,
    )
    return SMTPRelay.from_options("x", opts)


async def test_the_envelope_arrives_as_given(smtp_server: SMTPPeer) -> None:
    sink = relay(smtp_server)
    rcpts = ("o'brien+tag@example.net", "bob@sub.example.net")
    try:
        result = await sink.deliver(
            Envelope("app@example.com", rcpts, make_message("app@example.com", rcpts), id="q1")
        )
        bounce = await sink.deliver(
            Envelope("", ("app@example.com",), make_message("", ("app@example.com",)), id="q2")
        )
    finally:
        await sink.aclose()
    assert {a: r.code for a, r in result.replies.items()} == dict.fromkeys(rcpts, 250)
    assert bounce.replies["app@example.com"].code == 250
    first, second = smtp_server.messages
    assert (first.mail_from, first.rcpt_tos) == ("app@example.com", list(rcpts))
    assert second.mail_from in ("", "<>")


async def test_refusals_on_the_fast_path_are_per_recipient(smtp_server: SMTPPeer) -> None:
    sink = relay(smtp_server)
    rcpts = ("perm-x@example.net", "temp-y@example.net", "ok@example.net")
    try:
        result = await sink.deliver(
            Envelope("app@example.com", rcpts, make_message("app@example.com", rcpts), id="q1")
        )
    finally:
        await sink.aclose()
    assert {a: r.code for a, r in result.replies.items()} == {
        "perm-x@example.net": 550,
        "temp-y@example.net": 451,
        "ok@example.net": 250,
    }


@pytest.mark.parametrize("odd", ['a"b@example.net', "a(b)@example.net"])
async def test_an_address_aiosmtplib_would_rewrite_is_refused(
    smtp_server: SMTPPeer, odd: str
) -> None:
    """aiosmtplib's parser sends a"b@example.net as <a>: refused, never reinterpreted (as a
    recipient it gets its own 553 5.1.3; as the sender the message fails, 553 5.1.7)."""
    sink = relay(smtp_server)
    message = b"Subject: x\r\n\r\nx\r\n"
    try:
        result = await sink.deliver(Envelope("app@example.com", (odd,), message))
        with pytest.raises(PermanentRelayError, match="cannot be sent safely") as caught:
            await sink.deliver(Envelope(odd, ("bob@example.net",), message))
    finally:
        await sink.aclose()
    reply = result.replies[odd]
    assert (reply.code, reply.enhanced) == (553, "5.1.3")
    assert caught.value.reply is not None
    assert (caught.value.reply.code, caught.value.reply.enhanced) == (553, "5.1.7")
    assert smtp_server.messages == [] and smtp_server.connections == 0


async def test_a_quoted_local_part_still_goes_through_aiosmtplib(smtp_server: SMTPPeer) -> None:
    sink = relay(smtp_server)
    quoted = '"a.b"@example.net'
    try:
        result = await sink.deliver(
            Envelope("app@example.com", (quoted,), b"Subject: x\r\n\r\nx\r\n")
        )
    finally:
        await sink.aclose()
    assert result.replies[quoted].code == 250
    assert len(smtp_server.messages) == 1  # (aiosmtpd unquotes the local part it received)
