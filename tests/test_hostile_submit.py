"""Hostile input through HTTP submission ([[submit]], ``POST /api/v1/messages``): a real daemon
in this process, its [http] server on 127.0.0.1 (port 0), aiohttp's client as the application
and the in-test SMTP sink as the relay's peer. Each case asserts the answer (the HTTP status and
the problem+json type) and that nothing from a sender that is not allowed reaches the sink: an
allowed message sent last arrives alone.

Header injection in the JSON (CR, LF and the other line breaks a mail library splits on), the
envelope given apart against the message's own headers, envelope lines in a raw message, tokens
used where they do not belong, bodies too large. The SMTP path: tests/test_hostile_smtpd.py.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from corehelpers import make_message
from smtpserver import SMTPPeer
from sourcerun import Running, running, sink_holds_only

from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.plugins.host import PluginHost

SUBMIT_TOKEN = "submit-token-for-the-hostile-tests-0123"
READ_TOKEN = "read-token-for-the-hostile-tests-012345"
OPERATOR_TOKEN = "operator-token-for-the-hostile-tests-01"
RAW = {"Content-Type": "message/rfc822"}


@pytest.fixture
def config(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path, smtp_server: SMTPPeer
) -> Config:
    text = f"""
        [queue]
        dir = "{queue_dir}"
        max_message_size = "16KB"
        [[spool]]
        path = "{spool}"
        allowed_senders = ["*@example.com"]
        [relays.sink]
        plugin = "smtp"
        host = "127.0.0.1"
        port = {smtp_server.port}
        security = "none"
        [http]
        enabled = true
        port = 0
        token = "{READ_TOKEN}"
        operator_token = "{OPERATOR_TOKEN}"
        max_body = "32KB"
        [[submit]]
        token = "{SUBMIT_TOKEN}"
        relay = "sink"
        allowed_senders = ["*@example.com", "sales@shop.example"]
    """
    return load_config(write_config(textwrap.dedent(text)))


class Client:
    def __init__(self, mqd: Running, http: aiohttp.ClientSession) -> None:
        self.mqd = mqd
        self.http = http

    async def post(
        self, body: Any = None, *, token: str = SUBMIT_TOKEN, **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        """POST /api/v1/messages: the status and the decoded answer."""
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        if body is not None:
            kwargs["json"] = body
        async with self.http.post("/api/v1/messages", headers=headers, **kwargs) as answer:
            if answer.status >= 400:
                assert answer.content_type == "application/problem+json", answer.status
            return answer.status, json.loads(await answer.text())

    async def canary(self) -> None:
        status, answer = await self.post(data=make_message(subject="ok"), headers=RAW)
        assert status == 202, answer


@pytest.fixture
async def mqd(config: Config, host: PluginHost) -> AsyncIterator[Client]:
    async with running(config, host) as daemon:
        assert daemon.daemon.http is not None
        async with aiohttp.ClientSession(base_url=daemon.daemon.http.url) as http:
            yield Client(daemon, http)


async def only_allowed_reached(mqd: Client, sink: SMTPPeer, count: int = 1) -> None:
    await mqd.canary()
    await sink_holds_only(mqd.mqd, sink, {"app@example.com"}, count)


MESSAGE = {"from": "app@example.com", "to": "alice@example.net", "text": "hi"}
SPOOF = make_message(sender="ceo@evil.test")
BREAKS = ["\r\n", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\x00"]


@pytest.mark.parametrize(
    "where", ["subject", "to", "cc", "from", "headers", "send_at", "filename", "content_type"]
)
@pytest.mark.parametrize("brk", BREAKS, ids=repr)
async def test_header_injection_in_json_is_422(
    mqd: Client, smtp_server: SMTPPeer, where: str, brk: str
) -> None:
    """A line break in a field would start a header of the caller's choosing (a Bcc, another
    From): the email package splits on every break ``str.splitlines`` knows, not only CR/LF."""
    injected = f"Bcc: victim@evil.test{brk}From: ceo@evil.test"
    fields: dict[str, Any] = {
        "subject": {"subject": f"hi{brk}{injected}"},
        "to": {"to": [f"alice@example.net{brk}{injected}"]},
        "cc": {"cc": f"Carol <carol@example.net>{brk}{injected}"},
        "from": {"from": f"App <app@example.com>{brk}{injected}"},
        "headers": {"headers": {"Reply-To": f"help@example.com{brk}{injected}"}},
        "send_at": {"send_at": f"2026-12-08T09:00:00+01:00{brk}{injected}"},
        "filename": {"attachments": [{"filename": f"a.txt{brk}{injected}", "content": "eA=="}]},
        "content_type": {
            "attachments": [
                {"filename": "a.txt", "content": "eA==", "content_type": f"text/plain{brk}x: y"}
            ]
        },
    }
    status, problem = await mqd.post({**MESSAGE, **fields[where]})
    assert status == 422, problem
    assert problem["type"] == "urn:mqd:problem:unusable-message"
    await only_allowed_reached(mqd, smtp_server)


@pytest.mark.parametrize(
    ("fields", "status", "problem"),
    [
        ({"headers": {"From": "ceo@evil.test"}}, 422, "unusable-message"),
        ({"headers": {"fROM": "ceo@evil.test"}}, 422, "unusable-message"),
        ({"headers": {"X-Sender": "evil@evil.test"}}, 422, "unusable-message"),
        ({"headers": {"x-receiver": "victim@evil.test"}}, 422, "unusable-message"),
        ({"headers": {"Bcc": "victim@evil.test"}}, 422, "unusable-message"),
        ({"headers": {"From ": "ceo@evil.test"}}, 422, "unusable-message"),
        ({"headers": {"X-A: b\r\nFrom": "ceo@evil.test"}}, 422, "unusable-message"),
        ({"headers": {"Sender": "ceo@evil.test"}}, 403, "sender-refused"),  # "on behalf of"
        ({"from": '"app@example.com" <ceo@evil.test>'}, 403, "sender-refused"),
        ({"from": "ceo@evil.test (app@example.com)"}, 403, "sender-refused"),
        ({"from": "app@example.com, ceo@evil.test"}, 422, "unusable-message"),
        ({"from": "\u017fales@shop.example"}, 403, "sender-refused"),
        ({"from": "app@ex\u0430mple.com"}, 422, "unusable-message"),  # not composed
        ({"from": "app@evil.test@example.com"}, 422, "unusable-message"),
        ({"from": "<>"}, 422, "unusable-message"),
        ({"from": ""}, 422, "unusable-message"),
    ],
    ids=repr,
)
async def test_json_spoofs_are_refused(
    mqd: Client, smtp_server: SMTPPeer, fields: dict[str, Any], status: int, problem: str
) -> None:
    got, answer = await mqd.post({**MESSAGE, **fields})
    assert got == status, answer
    assert answer["type"] == f"urn:mqd:problem:{problem}"
    await only_allowed_reached(mqd, smtp_server)


@pytest.mark.parametrize(
    ("query", "message", "status"),
    [
        ({"from": "app@example.com"}, make_message(sender="ceo@evil.test"), 403),
        ({"from": "evil@evil.test"}, make_message(sender="app@example.com"), 403),
        ({"from": "app@example.com"}, b"X-Sender: app@example.com\n" + SPOOF, 403),
        ({}, make_message(sender="app@example.com", envelope=("evil@evil.test", ("v@e.t",))), 403),
        ({}, make_message(sender="app@example.com", extra_headers=("From: ceo@evil.test",)), 422),
        ({"from": "app@example.com\r\nRCPT TO:<victim@evil.test>"}, make_message(), 422),
        ({"to": "alice@example.net>\r\nRCPT TO:<victim@evil.test"}, make_message(), 422),
        ({"from": "app@evil.test@example.com"}, make_message(sender="ceo@evil.test"), 422),
        ({"from": ""}, make_message(), 422),
        ({"from": "app\u200b@example.com"}, make_message(), 422),
    ],
    ids=repr,
)
async def test_raw_envelope_and_headers_must_both_be_allowed(
    mqd: Client, smtp_server: SMTPPeer, query: dict[str, str], message: bytes, status: int
) -> None:
    got, answer = await mqd.post(data=message, headers=RAW, params=query)
    assert got == status, answer
    await only_allowed_reached(mqd, smtp_server)


async def test_envelope_lines_in_a_raw_message_never_change_the_envelope(
    mqd: Client, smtp_server: SMTPPeer
) -> None:
    """The envelope given apart is the envelope: leading X-Sender / X-Receiver lines of the
    message are dropped and nobody they name gets anything."""
    message = make_message(envelope=("evil@evil.test", ("victim@evil.test",)))
    query = {"from": "app@example.com", "to": "alice@example.net"}
    status, answer = await mqd.post(data=message, headers=RAW, params=query)
    assert status == 202, answer
    status, answer = await mqd.post(  # as headers rather than the query
        data=message, headers={**RAW, "X-Mqd-From": query["from"], "X-Mqd-To": query["to"]}
    )
    assert status == 202, answer
    await sink_holds_only(mqd.mqd, smtp_server, {"app@example.com"}, 2)
    for received in smtp_server.messages:
        assert received.rcpt_tos == ["alice@example.net"]
        assert b"evil.test" not in received.data


@pytest.mark.parametrize(
    ("token", "method", "path", "local", "status"),
    [
        (READ_TOKEN, "POST", "/api/v1/messages", True, 401),
        (OPERATOR_TOKEN, "POST", "/api/v1/messages", True, 401),
        (SUBMIT_TOKEN[:-1], "POST", "/api/v1/messages", True, 401),
        (SUBMIT_TOKEN + "x", "POST", "/api/v1/messages", True, 401),
        (SUBMIT_TOKEN, "GET", "/api/v1/messages", False, 403),
        (SUBMIT_TOKEN, "GET", "/api/v1/status", False, 403),
        (SUBMIT_TOKEN, "POST", "/api/v1/suppressions", True, 403),
        (READ_TOKEN, "GET", "/api/v1/messages", False, 200),  # the control
    ],
    ids=["read", "operator", "prefix", "longer", "list", "status", "suppress", "control"],
)
async def test_each_token_works_only_where_it_belongs(
    mqd: Client,
    smtp_server: SMTPPeer,
    token: str,
    method: str,
    path: str,
    local: bool,
    status: int,
) -> None:
    """A submit token cannot read the API or act on the queue, and the API's tokens cannot
    submit. ``local=False`` comes as through a proxy (X-Forwarded-For), so that the loopback
    exemption of the read-only API does not apply."""
    headers = {"Authorization": f"Bearer {token}"}
    if not local:
        headers["X-Forwarded-For"] = "192.0.2.7"
    body = MESSAGE if path == "/api/v1/messages" else {"addresses": ["alice@example.net"]}
    async with mqd.http.request(method, path, headers=headers, json=body) as answer:
        assert answer.status == status, await answer.text()
    await only_allowed_reached(mqd, smtp_server)


async def test_a_huge_body_is_413_with_or_without_a_length(
    mqd: Client, smtp_server: SMTPPeer
) -> None:
    huge = make_message(body="x" * 70 + "\n" + ("y" * 76 + "\n") * 1000)  # some 77 KB
    status, problem = await mqd.post(data=huge, headers=RAW)
    assert status == 413 and "max_body" in problem["detail"], problem

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: read up to the cap
        for start in range(0, len(huge), 4096):
            yield huge[start : start + 4096]

    status, problem = await mqd.post(data=chunks(), headers=RAW)
    assert status == 413 and problem["type"] == "urn:mqd:problem:too-large", problem
    status, problem = await mqd.post({**MESSAGE, "text": "z" * 20_000})  # under max_body
    assert status == 413 and "max_message_size" in problem["detail"], problem
    await only_allowed_reached(mqd, smtp_server)
