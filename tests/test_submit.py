"""HTTP submission ([[submit]], issue 23 #2): ``POST /api/v1/messages`` on a real daemon's
[http] server (127.0.0.1, port 0) in this process, aiohttp's client as the application, the
memory relay as the provider."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sourcerun
from openapi_schema_validator import OAS31Validator
from openapi_schema_validator import validate as validate_schema

from mqd.admin.render import render_status
from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.errors import ConfigError, ConfigErrors
from mqd.http.openapi import openapi
from mqd.intake.sources import check_sources
from mqd.plugins.host import PluginHost
from mqd.queue.store import EntryState
from mqd.relays.memory import MemoryRelay
from mqd.testing import make_message
from mqd.testing.waiting import wait_until

SUBMIT_TOKEN = "submit-token-for-the-tests-0123456789"
OTHER_TOKEN = "submit-token-of-the-second-table-0123"
READ_TOKEN = "read-token-for-the-submit-tests-012345"
SUBMIT = {"Authorization": f"Bearer {SUBMIT_TOKEN}"}

CONFIG = """
[queue]
dir = "{queue}"
max_message_size = "{max_message_size}"

[[spool]]
path = "{spool}"
relay = "main"
allowed_senders = ["*@example.com"]

[relays.main]
plugin = "memory"

[relays.other]
plugin = "memory"

[http]
enabled = true
port = 0
token = "{read}"
max_body = "{max_body}"

[[submit]]
token = "{submit}"
relay = "main"
allowed_senders = ["noreply@example.com", "app@example.com"]

[[submit]]
token = "{other}"
relay = "other"
allowed_senders = ["billing@example.org"]
{extra}
"""


@pytest.fixture
def make_config(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path
) -> Callable[..., Config]:
    def make(extra: str = "", max_body: str = "1MB", max_message_size: str = "10MB") -> Config:
        text = CONFIG.format(
            queue=queue_dir,
            spool=spool,
            read=READ_TOKEN,
            submit=SUBMIT_TOKEN,
            other=OTHER_TOKEN,
            extra=extra,
            max_body=max_body,
            max_message_size=max_message_size,
        )
        return load_config(write_config(text))

    return make


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config()


class Running:
    def __init__(self, daemon: Daemon, http: aiohttp.ClientSession) -> None:
        self.daemon = daemon
        self.http = http

    async def post(self, body: Any = None, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
        """POST /api/v1/messages: the status, the headers and the decoded answer."""
        headers = {**SUBMIT, **kwargs.pop("headers", {})}
        if body is not None:
            kwargs["json"] = body
        async with self.http.post("/api/v1/messages", headers=headers, **kwargs) as answer:
            text = await answer.text()
            return answer.status, dict(answer.headers), json.loads(text) if text else None


@contextlib.asynccontextmanager
async def running(config: Config, host: PluginHost) -> AsyncIterator[Running]:
    async with sourcerun.running(config, host) as mqd:
        assert mqd.daemon.http is not None
        async with aiohttp.ClientSession(base_url=mqd.daemon.http.url) as http:
            yield Running(mqd.daemon, http)


def sent(relay: str = "main") -> list[Any]:
    found = MemoryRelay.instances.get(relay)
    return found.sent if found is not None else []


async def delivered(count: int, relay: str = "main") -> list[Any]:
    await wait_until(lambda: len(sent(relay)) >= count, f"{count} message(s) at {relay}")
    return sent(relay)


def queued_count(queue_dir: Path) -> int:
    return sum(1 for p in (queue_dir / "messages").rglob("*.eml"))


JSON_MESSAGE = {
    "from": "App <noreply@example.com>",
    "to": ["alice@example.net"],
    "cc": "carol@example.net",
    "bcc": ["bob@example.net"],
    "subject": "Your receipt ✓",
    "text": "Thanks for your order.",
    "html": "<p>Thanks for your <b>order</b>.</p>",
    "headers": {"Reply-To": "help@example.com", "X-Campaign": "receipts"},
}


async def test_a_json_message_is_composed_queued_and_delivered(
    config: Config, host: PluginHost
) -> None:
    async with running(config, host) as mqd:
        status, headers, answer = await mqd.post(JSON_MESSAGE)
        assert status == 202, answer
        assert headers["Location"] == f"/api/v1/messages/{answer['id']}"
        [envelope] = await delivered(1)
        assert envelope.id == answer["id"]
        assert envelope.sender == "noreply@example.com"
        assert envelope.recipients == ("alice@example.net", "carol@example.net", "bob@example.net")
        message = email.message_from_bytes(envelope.message, policy=email.policy.default)
        assert message["Message-ID"] == answer["message_id"]
        assert message["Subject"] == "Your receipt ✓"
        assert message["Reply-To"] == "help@example.com" and message["X-Campaign"] == "receipts"
        assert message["Bcc"] is None and "bob@" not in envelope.message.decode()
        assert message.get_content_type() == "multipart/alternative"
        assert message.get_body(("plain",)).get_content().strip() == "Thanks for your order."
        assert "<b>order</b>" in message.get_body(("html",)).get_content()
        [source, _other] = mqd.daemon.source_status()
        assert (source.name, source.accepted, source.refused) == ("submit[0]", 1, 0)


async def test_a_raw_message_takes_its_envelope_from_the_query_the_headers_or_itself(
    config: Config, host: PluginHost
) -> None:
    raw = make_message(sender="app@example.com", to=("alice@example.net",), subject="raw")
    rfc822 = {"Content-Type": "message/rfc822"}
    async with running(config, host) as mqd:
        status, _, by_query = await mqd.post(
            data=raw,
            headers=rfc822,
            params=[("from", "app@example.com"), ("to", "x@example.net"), ("to", "y@example.net")],
        )
        assert status == 202, by_query
        status, _, by_headers = await mqd.post(
            data=raw,
            headers={**rfc822, "X-Mqd-From": "app@example.com", "X-Mqd-To": "z@example.net"},
        )
        assert status == 202, by_headers
        status, _, by_itself = await mqd.post(data=raw, headers=rfc822)
        assert status == 202, by_itself
        envelopes = {e.id: e for e in await delivered(3)}
        assert envelopes[by_query["id"]].recipients == ("x@example.net", "y@example.net")
        assert envelopes[by_headers["id"]].recipients == ("z@example.net",)
        assert envelopes[by_itself["id"]].recipients == ("alice@example.net",)
        assert envelopes[by_itself["id"]].sender == "app@example.com"
        written = email.message_from_bytes(raw)["Message-ID"]
        assert by_itself["message_id"] == written
        assert envelopes[by_query["id"]].message.endswith(raw.split(b"\r\n\r\n", 1)[1])


async def test_a_raw_message_without_a_message_id_gets_one_and_the_answer_names_it(
    config: Config, host: PluginHost
) -> None:
    raw = b"From: app@example.com\r\nTo: alice@example.net\r\nSubject: bare\r\n\r\nhi\r\n"
    async with running(config, host) as mqd:
        status, _, answer = await mqd.post(data=raw, headers={"Content-Type": "message/rfc822"})
        assert status == 202, answer
        [envelope] = await delivered(1)
        message = email.message_from_bytes(envelope.message)
        assert message["Message-ID"] == answer["message_id"]


async def test_the_token_says_which_table_applies(config: Config, host: PluginHost) -> None:
    billing = {"from": "billing@example.org", "to": "alice@example.net", "text": "invoice"}
    async with running(config, host) as mqd:
        other = {"Authorization": f"Bearer {OTHER_TOKEN}"}
        status, _, answer = await mqd.post(billing, headers=other)
        assert status == 202, answer
        [envelope] = await delivered(1, "other")
        assert envelope.id == answer["id"] and sent("main") == []
        # The first table does not allow billing@: its token cannot send as it.
        status, _, problem = await mqd.post(billing)
        assert status == 403 and problem["type"] == "urn:mqd:problem:sender-refused"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {SUBMIT_TOKEN}", f"Bearer {READ_TOKEN}"],
    ids=["missing", "wrong", "not-bearer", "read-token"],
)
async def test_without_a_submit_token_the_answer_is_401_even_from_this_machine(
    config: Config, host: PluginHost, queue_dir: Path, authorization: str | None
) -> None:
    async with running(config, host) as mqd:
        headers = {"Authorization": authorization} if authorization else {}
        async with mqd.http.post("/api/v1/messages", json=JSON_MESSAGE, headers=headers) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer ")
            assert r.content_type == "application/problem+json"
            problem = await r.json()
        assert problem["status"] == 401 and problem["type"] == "urn:mqd:problem:unauthorized"
        if authorization == f"Bearer {READ_TOKEN}":
            assert "read and operator tokens cannot submit" in problem["detail"]
        # Loopback still reads the API without a token: only submitting needs one.
        async with mqd.http.get("/api/v1/status") as r:
            assert r.status == 200
        assert queued_count(queue_dir) == 0


async def test_a_refused_sender_is_a_403_problem_and_nothing_is_queued(
    config: Config, host: PluginHost, queue_dir: Path
) -> None:
    async with running(config, host) as mqd:
        status, headers, problem = await mqd.post({**JSON_MESSAGE, "from": "evil@example.net"})
        assert status == 403
        assert headers["Content-Type"].startswith("application/problem+json")
        assert set(problem) == {"type", "title", "status", "detail"}
        assert problem["status"] == 403 and "evil@example.net" in problem["detail"]
        raw = make_message(sender="evil@example.net")
        status, _, problem = await mqd.post(data=raw, headers={"Content-Type": "message/rfc822"})
        assert status == 403
        counts = await mqd.daemon.store.counts()
        assert counts.total == 0 and queued_count(queue_dir) == 0
        source = mqd.daemon.source_status()[0]
        assert (source.accepted, source.refused) == (0, 2)


async def test_an_idempotency_key_queues_once_and_answers_the_same_across_a_restart(
    config: Config, host: PluginHost
) -> None:
    key = {"Idempotency-Key": "order-1234-receipt"}
    async with running(config, host) as mqd:
        status, first_headers, first = await mqd.post(JSON_MESSAGE, headers=key)
        assert status == 202 and "Idempotent-Replayed" not in first_headers
        status, again_headers, again = await mqd.post(JSON_MESSAGE, headers=key)
        assert status == 202 and again == first
        assert again_headers["Idempotent-Replayed"] == "true"
        await delivered(1)
        # The same key with another message is refused, not answered for the first one.
        status, _, problem = await mqd.post({**JSON_MESSAGE, "subject": "other"}, headers=key)
        assert status == 422 and problem["type"] == "urn:mqd:problem:idempotency-key-reused"
        # Keys are per token: the other table's producer may use the same one.
        billing = {"from": "billing@example.org", "to": "a@example.net", "text": "x"}
        status, _, own = await mqd.post(
            billing, headers={**key, "Authorization": f"Bearer {OTHER_TOKEN}"}
        )
        assert status == 202 and own["id"] != first["id"]
    async with running(config, host) as mqd:  # a new daemon on the same queue
        status, headers, after = await mqd.post(JSON_MESSAGE, headers=key)
        assert status == 202 and after == first and headers["Idempotent-Replayed"] == "true"
        status, _, fresh = await mqd.post(JSON_MESSAGE, headers={"Idempotency-Key": "other"})
        assert status == 202 and fresh["id"] != first["id"]
        await delivered(1)
        assert [e.id for e in sent()] == [fresh["id"]], "the first was not queued again"


async def test_concurrent_requests_with_one_key_queue_one_message(
    config: Config, host: PluginHost
) -> None:
    async with running(config, host) as mqd:
        key = {"Idempotency-Key": "a1b2c3"}
        answers = await asyncio.gather(*(mqd.post(JSON_MESSAGE, headers=key) for _ in range(8)))
        assert {status for status, _, _ in answers} == {202}
        assert len({answer["id"] for _, _, answer in answers}) == 1
        assert sum(1 for _, h, _ in answers if "Idempotent-Replayed" not in h) == 1
        await delivered(1)

        async def drained() -> bool:
            return (await mqd.daemon.store.counts()).total == 0

        await wait_until(drained, "the queue to be empty")
        assert len(sent()) == 1
        assert mqd.daemon.source_status()[0].accepted == 1


async def test_too_large_is_413(make_config: Callable[..., Config], host: PluginHost) -> None:
    config = make_config(max_body="8KB", max_message_size="4KB")
    async with running(config, host) as mqd:
        status, _, problem = await mqd.post({**JSON_MESSAGE, "text": "x" * 10_000})
        assert status == 413 and "max_body" in problem["detail"]
        status, _, problem = await mqd.post({**JSON_MESSAGE, "text": "y" * 5_000})
        assert status == 413 and "max_message_size" in problem["detail"]
        assert problem["type"] == "urn:mqd:problem:too-large"
        assert (await mqd.daemon.store.counts()).total == 0


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b'{"from": "noreply@example.com", "to": ', 400, "not JSON"),
        (b'["a list"]', 400, "JSON object"),
        (b'{"from": "noreply@example.com", "to": 7, "text": "x"}', 400, "to must be"),
        (b'{"from": "noreply@example.com", "too": "a@example.net"}', 400, "unknown field"),
        (b'{"to": "a@example.net", "text": "x"}', 400, "from is required"),
        (b'{"from": "noreply@example.com", "text": "x"}', 422, "at least one recipient"),
        (b'{"from": "noreply@example.com", "to": "a@example.net"}', 422, "text, html"),
        (
            b'{"from": "noreply@example.com", "to": "a@x.net", "text": "x", '
            b'"subject": "a\\r\\nBcc: victim@x.net"}',
            422,
            "CR, LF",
        ),
        (
            b'{"from": "noreply@example.com", "to": "a@x.net", "text": "x", '
            b'"attachments": [{"filename": "a.txt", "content": "**"}]}',
            400,
            "not base64",
        ),
    ],
    ids=[
        "truncated",
        "list",
        "wrong-type",
        "unknown",
        "no-from",
        "no-rcpt",
        "no-body",
        "injection",
        "base64",
    ],
)
async def test_malformed_json_is_a_400_problem(
    config: Config, host: PluginHost, body: bytes, status: int, words: str
) -> None:
    async with running(config, host) as mqd:
        got, headers, problem = await mqd.post(
            data=body, headers={"Content-Type": "application/json"}
        )
        assert got == status, problem
        assert headers["Content-Type"].startswith("application/problem+json")
        assert words in problem["detail"]
        assert (await mqd.daemon.store.counts()).total == 0


async def test_attachments_arrive(config: Config, host: PluginHost) -> None:
    pdf = b"%PDF-1.4 \x00\x01\x02 not really"
    attachments = [
        {"filename": "invoice.pdf", "content": base64.b64encode(pdf).decode()},
        {
            "filename": "data",
            "content_type": "text/csv",
            "content": base64.b64encode(b"a,b\n").decode(),
        },
    ]
    async with running(config, host) as mqd:
        status, _, answer = await mqd.post({**JSON_MESSAGE, "attachments": attachments})
        assert status == 202, answer
        [envelope] = await delivered(1)
        message = email.message_from_bytes(envelope.message, policy=email.policy.default)
        files = {part.get_filename(): part for part in message.iter_attachments()}
        assert files["invoice.pdf"].get_content_type() == "application/pdf"
        assert files["invoice.pdf"].get_content() == pdf
        assert files["data"].get_content_type() == "text/csv"
        assert message.get_body(("plain",)).get_content().strip() == "Thanks for your order."


async def test_send_at_makes_it_scheduled(config: Config, host: PluginHost) -> None:
    async with running(config, host) as mqd:
        status, _, answer = await mqd.post({**JSON_MESSAGE, "send_at": "2099-01-01T09:00:00Z"})
        assert status == 422 and "send_later_horizon" in answer["detail"]
        status, _, answer = await mqd.post({**JSON_MESSAGE, "send_at": "tomorrow"})
        assert status == 422 and "X-Mqd-Send-At" in answer["detail"]
        when = datetime.now(timezone(timedelta(hours=1))).replace(microsecond=0)
        when += timedelta(days=1)
        status, _, answer = await mqd.post({**JSON_MESSAGE, "send_at": when.isoformat()})
        assert status == 202, answer
        listed = await mqd.daemon.store.get(answer["id"])
        assert listed is not None and listed.state == EntryState.SCHEDULED
        assert listed.entry.next_attempt_at == listed.entry.send_at == when.timestamp()
        assert sent() == []


async def test_mqd_status_shows_the_submit_source(config: Config, host: PluginHost) -> None:
    async with running(config, host) as mqd:
        await mqd.post(JSON_MESSAGE)
        await mqd.post({**JSON_MESSAGE, "from": "evil@example.net"})
        status = await mqd.daemon.admin.status()
        source = status.sources[0]
        assert (source.name, source.kind, source.accepted, source.refused) == (
            "submit[0]",
            "submit",
            1,
            1,
        )
        text = "\n".join(render_status(status.to_dict()))
    assert "submit[0]: [http] POST /api/v1/messages; 0 connected, 1 accepted, 1 refused" in text


def test_config_checks_the_submit_tables(make_config: Callable[..., Config]) -> None:
    host = PluginHost(entry_points=False)
    assert check_sources(make_config(), host) == []
    same = make_config(extra=f'[[submit]]\ntoken = "{SUBMIT_TOKEN}"\nrelay = "main"\n')
    [problem] = check_sources(same, host)
    assert problem.key == "submit[2].token" and "submit[0]" in str(problem)
    reader = make_config(extra=f'[[submit]]\ntoken = "{READ_TOKEN}"\nrelay = "main"\n')
    [problem] = check_sources(reader, host)
    assert "[http] token" in str(problem)
    untokened = make_config(extra='[[submit]]\nrelay = "main"\n')
    [problem] = check_sources(untokened, host)
    assert problem.key == "submit[2].token_file"


def test_submit_needs_the_http_server(
    write_config: Callable[[str], Path], queue_dir: Path, spool: Path
) -> None:
    text = f"""
    [queue]
    dir = "{queue_dir}"
    [[spool]]
    path = "{spool}"
    [relays.main]
    plugin = "memory"
    [[submit]]
    token = "{SUBMIT_TOKEN}"
    """
    config = load_config(write_config(text))
    with pytest.raises((ConfigError, ConfigErrors), match=r"\[http\] enabled = true"):
        Daemon(config, host=PluginHost(entry_points=False))


def conforms(instance: Any, schema: str) -> None:
    spec = openapi()
    root = {"$ref": f"#/components/schemas/{schema}", "components": spec["components"]}
    validate_schema(instance, root, cls=OAS31Validator)


async def test_the_openapi_document_describes_the_request_and_the_answers(
    config: Config, host: PluginHost
) -> None:
    operation = openapi()["paths"]["/api/v1/messages"]["post"]
    assert operation["security"] == [{"submit": []}]
    assert {"202", "400", "401", "403", "413", "422"} <= set(operation["responses"])
    conforms(JSON_MESSAGE, "JsonMessage")
    schema = openapi()["components"]["schemas"]["JsonMessage"]
    assert schema["required"] == ["from"] and "from_" not in schema["properties"]
    async with running(config, host) as mqd:
        async with mqd.http.get("/api/v1/openapi.json") as r:
            assert (await r.json())["paths"]["/api/v1/messages"]["post"] == operation
        status, _, answer = await mqd.post(JSON_MESSAGE)
        assert status == 202
        conforms(answer, "Submitted")
        status, _, problem = await mqd.post({**JSON_MESSAGE, "from": "evil@example.net"})
        assert status == 403
        conforms(problem, "Problem")


async def test_a_reload_keeps_the_keys_of_a_token_and_applies_a_new_token(
    make_config: Callable[..., Config], host: PluginHost
) -> None:
    config = make_config()
    assert config.source is not None
    key = {"Idempotency-Key": "k-1"}
    async with running(config, host) as mqd:
        status, _, first = await mqd.post(JSON_MESSAGE, headers=key)
        assert status == 202
        await mqd.daemon.reload()
        status, headers, again = await mqd.post(JSON_MESSAGE, headers=key)
        assert status == 202 and again == first and headers["Idempotent-Replayed"] == "true"
        assert mqd.daemon.source_status()[0].accepted == 1
        text = config.source.read_text().replace(SUBMIT_TOKEN, "a-new-submit-token-0123456789")
        config.source.write_text(text)
        await mqd.daemon.reload()
        status, _, _ = await mqd.post(JSON_MESSAGE)
        assert status == 401
        new = {"Authorization": "Bearer a-new-submit-token-0123456789"}
        status, _, answer = await mqd.post(JSON_MESSAGE, headers={**new, **key})
        assert status == 202 and answer["id"] != first["id"], "keys are per token"
