"""SMTP submission's own fast readings agree with aiosmtpd's general ones: the paths of MAIL FROM
and RCPT TO, the commands found on a connection, the bare line endings."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from mqd.intake.smtpd.session import Connection, Handler, _commands, bare_line_ending

PATHS = [
    "<a@b.c> SIZE=1",
    "<a@b.c>",
    " <a.b@c>  BODY=8BITMIME",
    "<a@b.c>x",
    "<A.B@Example.COM>",
    "<a@b> SIZE=1 ",
    "<a@b>\tX=1",
    "<first.last+tag@mail.example.org> SIZE=2048 BODY=8BITMIME",
    # Not the everyday form: aiosmtpd's parsing answers.
    "<>",
    '<"a b"@c>',
    "<a@[1.2.3.4]>",
    "<a..b@c>",
    "<@x,@y:a@b>",
    "<a@b>(c) SIZE=1",
    "a@b",
    "<a@b.>",
    "<.a@b>",
    "<ü@b>",
    "<a@b",
    "a@b>",
    "<a\\@b@c>",
]


class _Bare(Connection):
    def __init__(self, local_part_limit: int = 0) -> None:  # no listener: _getaddr only
        self.local_part_limit = local_part_limit


@pytest.mark.parametrize("limit", [0, 3])
@pytest.mark.parametrize("arg", PATHS)
async def test_paths_read_as_aiosmtpd_reads_them(arg: str, limit: int) -> None:
    reference = SMTP(object(), loop=asyncio.get_running_loop())
    reference.local_part_limit = limit
    assert _Bare(limit)._getaddr(arg) == SMTP._getaddr(reference, arg)


def test_a_connection_and_its_handler_list_what_aiosmtpd_looks_for() -> None:
    expected = [n for n in dir(SMTP) if n.startswith(("smtp_", "auth_", "handle_"))]
    assert _commands(Connection) == expected
    assert "smtp_DATA" in expected and "auth_PLAIN" in expected
    hooks = [n for n in dir(Handler) if n.startswith("handle_")]
    assert _commands(Handler) == hooks
    assert {"handle_MAIL", "handle_RCPT", "handle_DATA", "handle_EHLO"} <= set(hooks)


@pytest.mark.parametrize(
    ("data", "bare"),
    [
        (b"", False),
        (b"a\r\nb\r\n", False),
        (b"a\nb\r\n", True),
        (b"a\r\nb\r", True),
        (b"a\rb\r\n", True),
        (b"\n.\n", True),
        (b"\r\n.\r", True),
        (b"a\r\r\n", True),
        (b"a\r\n\n", True),
    ],
)
def test_bare_line_endings(data: bytes, bare: bool) -> None:
    assert bare_line_ending(data) is bare


async def test_the_ehlo_hook_is_taken_in_its_five_argument_form_and_offers_pipelining() -> None:
    loop = asyncio.get_running_loop()
    server = SMTP(Handler(object()), loop=loop)  # type: ignore[arg-type]
    assert server._ehlo_hook_ver == "new"  # (told from its signature)
    session = Session(loop)
    replies = await server._handle_hooks["EHLO"](
        server, session, Envelope(), "client.example", ["250-mx", "250-8BITMIME", "250 HELP"]
    )
    # (One reply of many lines, written at once.)
    assert replies == ["250-mx\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 HELP"]
    assert session.host_name == "client.example"
