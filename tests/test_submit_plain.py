"""The submit API's everyday message written directly is what the email package composes from
the same JSON (``compose_json``'s slow path), byte for byte; anything else goes the slow way.
The headers it gives the hand-over with it (so that they are not read again) are the ones
``parse_message`` reads of it."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from hypothesis import given, settings
from hypothesis import strategies as st

from mqd.intake.submit.plain import plain_headers, plain_message
from mqd.message.envelope import parse_message
from mqd.message.mimepolicy import COMPOSING, SENDING


def composed(sender: str, to: list[str], cc: list[str], subject: str, text: str) -> bytes:
    """As ``compose_json`` composes it with the email package."""
    msg = EmailMessage(policy=COMPOSING)
    msg["From"] = sender
    if to:
        msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg["Date"] = DATE
    msg["Message-ID"] = MESSAGE_ID
    msg.set_content(text if text.endswith("\n") else text + "\n")
    return msg.as_bytes(policy=SENDING)


DATE = formatdate(localtime=True)
MESSAGE_ID = make_msgid(domain="example.com")

atoms = st.text("abcXYZ019.-_+", min_size=1, max_size=12)
addresses = st.builds(lambda a, b: f"{a}@{b}.example", atoms, st.text("abcxyz019-", min_size=1))
names = st.text("abc XYZ19.\"'", min_size=1, max_size=20)
mailboxes = addresses | st.builds(lambda n, a: f"{n} <{a}>", names, addresses)
printable = st.characters(min_codepoint=32, max_codepoint=126)
subjects = (
    st.text(printable, max_size=70)
    | st.text(st.characters(min_codepoint=9, max_codepoint=0x7F), max_size=90)
    | st.text(max_size=20)
)
texts = (
    st.text(printable | st.sampled_from("\n\t"), max_size=300)
    | st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=300)
    | st.text(max_size=50)
)


@settings(max_examples=400, deadline=None)
@given(mailboxes, st.lists(mailboxes, max_size=3), st.lists(mailboxes, max_size=2), subjects, texts)
def test_written_as_the_email_package_writes_it(
    sender: str, to: list[str], cc: list[str], subject: str, text: str
) -> None:
    fast = plain_message(sender, to, cc, subject, text, DATE, MESSAGE_ID)
    if fast is not None:
        assert fast == composed(sender, to, cc, subject, text)
        read = parse_message(fast, require_sender=False, require_recipients=False).headers
        assert plain_headers(sender, to, cc, subject, MESSAGE_ID) == read


def test_the_everyday_message_takes_the_short_way() -> None:
    cases = [
        ("app@example.com", ["alice@example.net"], [], "bench", "x" * 78 + "\n" * 3),
        ("App Name <app@example.com>", ["a@example.net", "B c <b@example.org>"], [], "", "hi"),
        ("app@example.com", [], ["c@example.org"], "a b: (c) [d]", "line\n\n.\nFrom me\t \n"),
    ]
    for sender, to, cc, subject, text in cases:
        fast = plain_message(sender, to, cc, subject, text, DATE, MESSAGE_ID)
        assert fast is not None and fast == composed(sender, to, cc, subject, text)
        assert plain_headers(sender, to, cc, subject, MESSAGE_ID) == parse_message(fast).headers


def test_anything_else_is_left_to_the_email_package() -> None:
    for sender, subject, text in [
        ("Ünï <app@example.com>", "s", "t"),
        ("app@example.com", "héllo", "t"),
        ("app@example.com", "=?utf-8?q?x?=", "t"),
        ("app@example.com", "s" * 80, "t"),
        ("app@example.com", "s", "x" * 79),
        ("app@example.com", "s", "ü"),
        ("app@example.com", "s", "a\rb"),
        ('"A, B" <app@example.com>', "s", "t"),
    ]:
        assert plain_message(sender, ["a@example.net"], [], subject, text, DATE, MESSAGE_ID) is None
