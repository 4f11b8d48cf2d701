"""The composing policy (its header classes made once) writes what the email package's default
policy writes."""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage
from email.policy import Policy

from mqd.message.mimepolicy import COMPOSING, SENDING


def _compose(composing: Policy, sending: Policy) -> bytes:
    msg = EmailMessage(policy=composing)
    msg["From"] = "Ünïcode Name <app@example.com>"
    msg["To"] = "a@example.net, B <b@example.org>"
    msg["Subject"] = "héllo " * 20
    msg["Reply-To"] = "x@example.com"
    msg["Message-ID"] = "<1@example.com>"
    msg.set_content("text ü\n" * 30)
    msg.add_alternative("<p>hi</p>", subtype="html")
    msg.add_attachment(b"\x00\x01" * 100, maintype="application", subtype="pdf", filename="ä.pdf")
    # The MIME boundaries are random: the same wherever they are.
    return re.sub(rb"={15}\d+==", b"BOUNDARY", msg.as_bytes(policy=sending))


def test_composed_as_with_the_default_policy() -> None:
    expected = _compose(policy.default, policy.default.clone(linesep="\r\n"))
    assert _compose(COMPOSING, SENDING) == expected
    assert b"\r\n" in expected and b"=?utf-8?" in expected


def test_header_classes_are_made_once() -> None:
    factory = COMPOSING.header_factory
    assert factory["Subject"] is factory["subject"]
    assert factory["To"] is not factory["Subject"]
