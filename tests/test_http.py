"""The daemon's HTTP server: a real daemon with ``[http]`` on port 0 and the real event store,
asked over HTTP with aiohttp's client. Webhooks come from a test relay plugin whose webhook
checks an HMAC signature, the way a provider's plugin does."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from corehelpers import drop, make_message
from openapi_schema_validator import OAS31Validator
from openapi_schema_validator import validate as validate_schema
from openapi_spec_validator import validate as validate_spec

from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.errors import ConfigError
from mqd.http.access import SESSION_COOKIE
from mqd.http.openapi import openapi
from mqd.message.reply import Reply
from mqd.plugins.hookspecs import RegisterRelay, hookimpl
from mqd.plugins.host import PluginHost
from mqd.plugins.webhooks import Webhook, WebhookRejected, WebhookReply, WebhookRequest
from mqd.queue.entry import new_message_id
from mqd.relays.memory import MemoryRelay
from mqd.testing import wait_until
from mqd.tracking.answers import MessageHistory, MessageSummary
from mqd.tracking.vocabulary import ProviderEvent, Status

TOKEN = "token-for-the-tests-6b1f0c"
SECRET = b"the provider's signing key"
SPEC = openapi()


# -- a provider plugin with a signed webhook ------------------------------------------------------


def sign(body: bytes) -> str:
    return hmac.new(SECRET, body, hashlib.sha256).hexdigest()


class SignedWebhook(Webhook):
    """Takes a JSON list of events signed with ``X-Test-Signature``; anything else is refused."""

    source = "testprovider"

    def __init__(self) -> None:
        self.requests: list[WebhookRequest] = []
        self.explode = False

    async def handle(self, request: WebhookRequest) -> WebhookReply:
        self.requests.append(request)
        if request.method != "POST":
            raise WebhookRejected(f"method {request.method} is not POST", status=405)
        if self.explode:
            raise RuntimeError("the webhook broke")
        signature = request.headers.get("x-test-signature", "")
        if not hmac.compare_digest(signature, sign(request.body)):
            raise WebhookRejected("signature mismatch (X-Test-Signature)")
        events = [
            ProviderEvent(
                status=Status(item["status"]),
                at=item.get("at", request.received_at),
                event_id=item["event_id"],
                recipient=item.get("recipient"),
                mqd_id=item.get("mqd_id"),
                reply=item.get("reply"),
                detail=item.get("detail", {}),
            )
            for item in json.loads(request.body)
        ]
        return WebhookReply(events=events, status=200, body="taken")


class HookedRelay(MemoryRelay):
    """The memory relay with a status webhook."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.hook = SignedWebhook()
        self.webhook_calls = 0

    def webhook(self) -> Webhook:
        self.webhook_calls += 1
        return self.hook


class Provider:
    @hookimpl
    def mqd_register_relays(self, register: RegisterRelay) -> None:
        register("hooked", HookedRelay)


CONFIG = """
[queue]
dir = "{queue}"
bounce_sender = "mailer-daemon@mqd.test"
scan_interval = "1s"
retry = {{ initial = "1h", max = "2h" }}

[http]
enabled = true
port = {port}
{http}

{tracking}

[[spool]]
path = "{spool}"
relay = "hooked"
allowed_senders = ["*@example.com"]

[relays.hooked]
plugin = "hooked"

[relays.plain]
plugin = "memory"
"""


@pytest.fixture
def make_config(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path
) -> Callable[..., Config]:
    def make(http: str = f'token = "{TOKEN}"', tracking: str = "", port: int = 0) -> Config:
        text = CONFIG.format(queue=queue_dir, spool=spool, http=http, tracking=tracking, port=port)
        return load_config(write_config(text))

    return make


class Served:
    def __init__(self, daemon: Daemon, session: aiohttp.ClientSession, spool: Path) -> None:
        self.daemon = daemon
        self.session = session
        self.spool = spool

    @property
    def relay(self) -> HookedRelay:
        relay = self.daemon.relays["hooked"]
        assert isinstance(relay, HookedRelay)
        return relay

    async def recorded(self, key: str, status: str) -> MessageHistory:
        """The history of ``key`` once it shows ``status``."""
        tracker = self.daemon.tracker
        assert tracker is not None

        async def shown() -> MessageHistory | None:
            found = await tracker.message(key)
            return found if found is not None and found.status == status else None

        found = await wait_until(shown, f"{key} to show {status}", 15)
        assert found is not None
        return found

    async def send(self, status: str = "dispatched", **message: Any) -> MessageHistory:
        """Drop a message into the spool; return its history once it shows ``status``."""
        data = make_message(**message)
        found = re.search(rb"Message-ID: (<[^>]+>)", data)
        assert found is not None
        drop(self.spool, data)
        return await self.recorded(found.group(1).decode(), status)

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.session.get(path, **kwargs) as response:
            if response.content_type == "application/json":
                return response.status, await response.json(), response
            return response.status, await response.text(), response


@asynccontextmanager
async def serving(config: Config, spool: Path) -> AsyncIterator[Served]:
    daemon = Daemon(config, host=PluginHost(entry_points=False, extra=[Provider()]))
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        assert daemon.http is not None
        async with aiohttp.ClientSession(base_url=daemon.http.url) as session:
            yield Served(daemon, session, spool)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def served(make_config: Callable[..., Config], spool: Path) -> AsyncIterator[Served]:
    async with serving(make_config(), spool) as served:
        yield served


def conforms(instance: Any, schema: str) -> None:
    """``instance`` is valid against the OpenAPI document's schema ``schema``."""
    root = {"$ref": f"#/components/schemas/{schema}", "components": SPEC["components"]}
    validate_schema(instance, root, cls=OAS31Validator)


# -- the server itself ----------------------------------------------------------------------------


async def test_serves_on_a_free_port_and_logs_its_url(
    make_config: Callable[..., Config], spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mqd.http"):
        async with serving(make_config(), spool) as served:
            http = served.daemon.http
            assert http is not None and http.port != 0
            assert http.url == f"http://127.0.0.1:{http.port}/"
            status, body, _response = await served.get("/api/v1/status")
            assert status == 200 and body["running"] is True
    assert any(http.url in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session, session.get(http.url):
            pass


def test_the_http_package_is_not_imported_unless_enabled() -> None:
    code = (
        "import sys, mqd.cli.main, mqd.daemon.root, mqd.config.load\n"
        "loaded = [m for m in sys.modules if m.startswith('mqd.http')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def run_once(config: Config) -> Daemon:
    return Daemon(config, host=PluginHost(entry_points=False, extra=[Provider()]), once=True)


async def test_a_port_in_use_is_a_config_error_naming_the_key(
    make_config: Callable[..., Config],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(port=port)
        with pytest.raises(ConfigError) as caught:
            await run_once(config).run()
    assert caught.value.key == "http.port"
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "in use" in message
    assert "set [http] port" in message and str(config.source) in message
    # The failed start let go of the queue: the next daemon runs.
    await run_once(make_config()).run()


async def test_an_address_of_another_machine_is_a_config_error(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(http='host = "192.0.2.1"')  # TEST-NET-1: never this machine's
    with pytest.raises(ConfigError) as caught:
        await run_once(config).run()
    assert caught.value.key == "http.host"
    assert "set [http] host to 127.0.0.1" in str(caught.value)


# -- access control -------------------------------------------------------------------------------


async def test_a_local_client_is_let_in_with_the_security_headers(served: Served) -> None:
    status, body, response = await served.get("/api/v1/status")
    assert status == 200
    conforms(body, "QueueStatus")
    status, _page, response = await served.get("/")
    assert status == 200 and response.content_type == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "form-action 'self'" in csp
    assert "script-src" not in csp  # nothing but the stylesheet is allowed
    assert re.search(r"style-src 'sha256-[A-Za-z0-9+/=]+'", csp)
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "header",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9;proto=https"},
        {"X-Real-IP": "203.0.113.9"},
        {"Host": "rebound.attacker.example"},  # DNS rebinding through a local browser
    ],
    ids=["x-forwarded-for", "forwarded", "x-real-ip", "foreign-host"],
)
async def test_a_proxied_or_rebound_request_needs_the_token(
    served: Served, header: dict[str, str]
) -> None:
    status, body, _ = await served.get("/api/v1/status", headers=header)
    assert status == 403
    conforms(body, "Error")
    assert "Authorization: Bearer" in body["error"] and "/login" in body["error"]
    status, page, response = await served.get("/messages", headers=header)
    assert status == 403 and response.content_type == "text/html"
    assert "Not allowed" in page and 'action="/login"' in page
    assert response.headers["X-Frame-Options"] == "DENY"

    bearer = {**header, "Authorization": f"Bearer {TOKEN}"}
    status, body, _ = await served.get("/api/v1/status", headers=bearer)
    assert status == 200 and body["running"] is True
    status, page, _ = await served.get("/messages", headers=bearer)
    assert status == 200 and "<h1>Messages</h1>" in page


async def test_a_wrong_token_is_refused(served: Served) -> None:
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    for value in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", f"Basic {TOKEN}"):
        status, _body, _ = await served.get(
            "/api/v1/status", headers={**proxied, "Authorization": value}
        )
        assert status == 403, value
    cookie = {SESSION_COOKIE: "0" * 64}
    status, _, _ = await served.get("/api/v1/status", headers=proxied, cookies=cookie)
    assert status == 403
    async with served.session.get(
        "/login", params={"token": "not-the-token"}, headers=proxied, allow_redirects=False
    ) as response:
        assert response.status == 403
        assert "Set-Cookie" not in response.headers
        assert "not the one" in await response.text()


async def test_login_sets_a_cookie_that_lets_the_browser_in(served: Served) -> None:
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    async with served.session.get(
        "/login", params={"token": TOKEN}, headers=proxied, allow_redirects=False
    ) as response:
        assert response.status == 303 and response.headers["Location"] == "/"
        set_cookie = response.headers["Set-Cookie"]
        value = response.cookies[SESSION_COOKIE].value
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Path=/" in set_cookie
    assert TOKEN not in set_cookie  # an HMAC of the token, not the token
    assert len(value) == 64
    cookies = {SESSION_COOKIE: value}
    status, page, _ = await served.get("/", headers=proxied, cookies=cookies)
    assert status == 200 and "<h1>Queue</h1>" in page
    status, _body, _ = await served.get("/api/v1/status", headers=proxied, cookies=cookies)
    assert status == 200
    # The sign-in form posts the token the same way.
    async with served.session.post(
        "/login", data={"token": TOKEN}, headers=proxied, allow_redirects=False
    ) as response:
        assert response.status == 303 and response.cookies[SESSION_COOKIE].value == value
    async with served.session.get("/logout", allow_redirects=False) as response:
        assert response.status == 303
        assert response.cookies[SESSION_COOKIE].value == ""


async def test_without_a_token_only_local_clients_get_in(
    make_config: Callable[..., Config], spool: Path
) -> None:
    async with serving(make_config(http=""), spool) as served:
        status, body, _ = await served.get("/api/v1/status")
        assert status == 200
        proxied = {"X-Forwarded-For": "203.0.113.9"}
        status, body, _ = await served.get(
            "/api/v1/status", headers={**proxied, "Authorization": f"Bearer {TOKEN}"}
        )
        assert status == 403 and "set [http] token_file" in body["error"]
        status, page, _ = await served.get("/login", params={"token": TOKEN}, headers=proxied)
        assert status == 403 and "No token is configured" in page


async def test_a_body_over_max_body_is_answered_413(
    make_config: Callable[..., Config], spool: Path
) -> None:
    async with serving(make_config(http='max_body = "2KB"'), spool) as served:
        body = b"[" + b" " * 10_000 + b"]"
        async with served.session.post(
            "/webhooks/hooked", data=body, headers={"X-Test-Signature": sign(body)}
        ) as response:
            assert response.status == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            for _ in range(5):
                yield b" " * 1000

        async with served.session.post("/webhooks/hooked", data=chunks()) as response:
            assert response.status == 413
        assert served.relay.hook.requests == []  # the webhook never saw either
        small = b"[]"
        async with served.session.post(
            "/webhooks/hooked", data=small, headers={"X-Test-Signature": sign(small)}
        ) as response:
            assert response.status == 200


# -- webhooks -------------------------------------------------------------------------------------


async def post_events(
    served: Served, events: list[dict[str, Any]], *, signature: str | None = None, **kwargs: Any
) -> tuple[int, str]:
    body = json.dumps(events).encode()
    headers = {"X-Test-Signature": signature if signature is not None else sign(body)}
    headers.update(kwargs.pop("headers", {}))
    async with served.session.post(
        "/webhooks/hooked", data=body, headers=headers, **kwargs
    ) as response:
        return response.status, await response.text()


async def test_a_genuine_webhook_is_recorded(served: Served) -> None:
    sent = await served.send(to=("alice@example.net",))
    event = {
        "status": "delivered",
        "event_id": "ev-1",
        "recipient": "alice@example.net",
        "mqd_id": sent.id,
        "reply": "250 accepted by the recipient's server",
    }
    # Not token-protected, and a proxy in front changes nothing: the signature is the proof.
    status, text = await post_events(
        served,
        [event],
        params={"a": "1"},
        headers={"X-Forwarded-For": "203.0.113.9", "X-Custom-Header": "Value"},
    )
    assert (status, text) == (200, "taken")
    [request] = served.relay.hook.requests
    assert request.method == "POST" and request.remote == "127.0.0.1"
    assert request.headers["x-custom-header"] == "Value"
    assert all(name == name.lower() for name in request.headers)
    assert request.query == {"a": "1"}
    assert json.loads(request.body) == [event]
    assert abs(request.received_at - time.time()) < 10

    history = await served.recorded(sent.id, "delivered")
    provider = [e for e in history.events if e.source == "testprovider"]
    assert [(e.status, e.recipient) for e in provider] == [("delivered", "alice@example.net")]
    assert history.recipients[0].status == "delivered"
    # The provider sends the same event again: answered, recorded once.
    assert await post_events(served, [event]) == (200, "taken")
    history = await served.recorded(sent.id, "delivered")
    assert len([e for e in history.events if e.source == "testprovider"]) == 1
    assert served.relay.webhook_calls == 1  # asked once, then cached


async def test_a_rejected_webhook_records_nothing(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    sent = await served.send(to=("alice@example.net",))
    event = {"status": "bounced", "event_id": "ev-2", "mqd_id": sent.id}
    with caplog.at_level(logging.WARNING, logger="mqd.http"):
        status, text = await post_events(served, [event], signature="forged")
    assert status == 403
    assert text == "rejected"  # the reason is logged, never told to the caller
    [warning] = [r.getMessage() for r in caplog.records if r.name == "mqd.http"]
    assert "hooked" in warning and "127.0.0.1" in warning and "signature mismatch" in warning
    assert served.daemon.tracker is not None
    await served.daemon.tracker.flush()  # what was buffered is written: nothing else comes
    history = await served.recorded(sent.id, "dispatched")
    assert {e.source for e in history.events} == {"mqd"}


async def test_webhook_routing_by_relay_and_method(served: Served) -> None:
    async with served.session.post("/webhooks/nosuchrelay", data=b"[]") as response:
        assert response.status == 404
    async with served.session.post("/webhooks/plain", data=b"[]") as response:
        assert response.status == 404  # a relay without a webhook
    async with served.session.get("/webhooks/hooked") as response:
        assert response.status == 405  # handed to the webhook, which decides
    assert [r.method for r in served.relay.hook.requests] == ["GET"]


async def test_a_failing_webhook_or_store_answers_500_so_the_provider_retries(
    served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    served.relay.hook.explode = True
    with caplog.at_level(logging.ERROR, logger="mqd.http"):
        assert await post_events(served, []) == (500, "error")
    assert any("the webhook broke" in (r.exc_text or "") for r in caplog.records)
    served.relay.hook.explode = False
    tracker = served.daemon.tracker
    assert tracker is not None

    async def broken_ingest(source: str, events: object) -> int:
        raise OSError("disk I/O error")

    monkeypatch.setattr(tracker, "ingest", broken_ingest)
    event = {"status": "delivered", "event_id": "ev-3", "mqd_id": "whatever"}
    assert (await post_events(served, [event]))[0] == 500


async def test_a_failing_store_is_a_500_page_and_a_json_500(
    served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = served.daemon.tracker
    assert tracker is not None

    async def broken_recent(**kwargs: object) -> list[MessageSummary]:
        raise OSError("database disk image is malformed")

    monkeypatch.setattr(tracker, "recent", broken_recent)
    with caplog.at_level(logging.ERROR, logger="mqd.http"):
        status, body, _ = await served.get("/api/v1/messages")
        assert status == 500
        conforms(body, "Error")
        assert "malformed" not in body["error"]  # the details go to the log only
        status, page, response = await served.get("/messages")
        assert status == 500 and "Something went wrong" in page
        assert response.headers["X-Frame-Options"] == "DENY"
    assert sum("malformed" in (r.exc_text or "") for r in caplog.records) == 2


async def test_with_tracking_off_webhooks_are_answered_and_history_is_503(
    make_config: Callable[..., Config], spool: Path
) -> None:
    config = make_config(tracking="[tracking]\nenabled = false")
    async with serving(config, spool) as served:
        assert served.daemon.tracker is None
        event = {"status": "delivered", "event_id": "ev-4", "mqd_id": "x"}
        assert await post_events(served, [event]) == (200, "taken")
        for path in (
            "/api/v1/messages",
            "/api/v1/messages/x",
            "/api/v1/history/a@example.net",
            "/api/v1/recipients/a@example.net/messages",
            "/api/v1/failures",
        ):
            status, body, _ = await served.get(path)
            assert status == 503, path
            conforms(body, "Error")
            assert "[tracking] enabled = false" in body["error"]
        status, body, _ = await served.get("/api/v1/status")
        assert status == 200
        status, page, _ = await served.get("/messages")
        assert status == 503 and "Tracking is off" in page
        status, page, _ = await served.get("/failed")
        assert status == 200 and "only the failed folder" in page


# -- the JSON API ---------------------------------------------------------------------------------


async def test_every_api_endpoint_answers_in_its_documented_shape(served: Served) -> None:
    served.relay.replies["bob@example.net"] = Reply(550, "no such user", "5.1.1")
    good = await served.send(to=("alice@example.net",), subject="for alice")
    bad = await served.send("failed", to=("bob@example.net",), subject="for bob")

    # One message, by queue id and by Message-ID with and without its brackets.
    assert good.message_id is not None
    for key in (good.id, good.message_id, good.message_id.strip("<>")):
        status, body, _ = await served.get(f"/api/v1/messages/{quote(key, safe='')}")
        assert status == 200, key
        conforms(body, "MessageHistory")
        assert body["id"] == good.id
    statuses = [e["status"] for e in body["events"]]
    assert statuses[:3] == ["accepted", "queued", "dispatched"]
    assert body["recipients"][0]["address"] == "alice@example.net"
    status, body, _ = await served.get("/api/v1/messages/no-such-message")
    assert status == 404
    conforms(body, "Error")

    status, body, _ = await served.get("/api/v1/messages")
    assert status == 200
    [conforms(m, "MessageSummary") for m in body["messages"]]
    ids = [m["id"] for m in body["messages"]]
    assert good.id in ids and bad.id in ids
    status, body, _ = await served.get("/api/v1/messages", params={"limit": "1"})
    assert len(body["messages"]) == 1
    status, body, _ = await served.get("/api/v1/messages", params={"status": "failed"})
    assert [m["id"] for m in body["messages"]] == [bad.id]

    status, body, _ = await served.get("/api/v1/recipients/ALICE@example.net/messages")
    assert status == 200
    assert [m["id"] for m in body["messages"]] == [good.id]
    conforms(body["messages"][0], "MessageSummary")

    status, body, _ = await served.get("/api/v1/history/app@example.com")
    assert status == 200
    [conforms(m, "MessageHistory") for m in body["messages"]]
    assert {good.id, bad.id} <= {m["id"] for m in body["messages"]}

    status, body, _ = await served.get("/api/v1/failures")
    assert status == 200
    assert [m["id"] for m in body["messages"]] == [bad.id]
    conforms(body["messages"][0], "MessageSummary")
    bob = body["messages"][0]["recipients"][0]
    assert bob["status"] == "bounced" and "no such user" in bob["reply"]
    for since, expected in (
        (str(time.time() + 3600), []),
        ("2000-01-01T00:00:00Z", [bad.id]),
        ("2000-01-01 00:00", [bad.id]),
    ):
        status, body, _ = await served.get("/api/v1/failures", params={"since": since})
        assert status == 200 and [m["id"] for m in body["messages"]] == expected, since

    status, body, _ = await served.get("/api/v1/status")
    assert status == 200
    conforms(body, "QueueStatus")
    assert body["failed"] == 1 and set(body["relays"]) == {"hooked", "plain"}

    status, body, _ = await served.get("/api/v1/openapi.json")
    assert status == 200 and body == SPEC


@pytest.mark.parametrize(
    ("path", "params", "mentions"),
    [
        ("/api/v1/messages", {"limit": "0"}, "limit"),
        ("/api/v1/messages", {"limit": "many"}, "limit"),
        ("/api/v1/messages", {"limit": "501"}, "limit"),
        ("/api/v1/messages", {"status": "lost"}, "status must be one of"),
        ("/api/v1/recipients/a@example.net/messages", {"limit": "-3"}, "limit"),
        ("/api/v1/failures", {"since": "yesterday"}, "ISO 8601"),
        ("/api/v1/failures", {"since": "nan"}, "since"),
        ("/api/v1/history/a@example.net", {"limit": "1e3"}, "limit"),
    ],
)
async def test_bad_query_values_are_400(
    served: Served, path: str, params: dict[str, str], mentions: str
) -> None:
    status, body, _ = await served.get(path, params=params)
    assert status == 400
    conforms(body, "Error")
    assert mentions in body["error"]


async def test_unknown_api_paths_answer_json(served: Served) -> None:
    status, body, _ = await served.get("/api/v1/nothing-here")
    assert status == 404
    conforms(body, "Error")
    async with served.session.post("/api/v1/status") as response:
        assert response.status == 405
        conforms(await response.json(), "Error")


def test_the_openapi_document_is_valid_and_describes_every_route(
    make_config: Callable[..., Config],
) -> None:
    validate_spec(SPEC)  # raises on an invalid OpenAPI 3.1 document
    assert SPEC["openapi"].startswith("3.1")
    for name in ("MessageSummary", "MessageHistory", "Event", "Status", "Error", "QueueStatus"):
        assert name in SPEC["components"]["schemas"]
    assert SPEC["components"]["schemas"]["Status"]["enum"] == [s.value for s in Status]

    from mqd.http.server import HttpServer

    daemon = Daemon(make_config(), host=PluginHost(entry_points=False, extra=[Provider()]))
    served = {
        resource.canonical
        for resource in HttpServer(daemon).app.router.resources()
        if resource.canonical.startswith(("/api/", "/webhooks/"))
    }
    assert served == set(SPEC["paths"])


# -- the web view ---------------------------------------------------------------------------------


async def test_the_pages_show_the_queue_messages_and_failures(served: Served) -> None:
    served.relay.replies["bob@example.net"] = Reply(550, "no such user", "5.1.1")
    good = await served.send(to=("alice@example.net",))
    bad = await served.send("failed", to=("bob@example.net",))

    status, page, _ = await served.get("/")
    assert status == 200
    assert "hooked" in page and "healthy" in page and '<a href="/failed">1</a>' in page

    status, page, _ = await served.get("/messages")
    assert status == 200
    assert f'href="/messages/{good.id}"' in page and f'href="/messages/{bad.id}"' in page
    status, page, _ = await served.get("/messages", params={"q": "bob@example.net"})
    assert bad.id in page and good.id not in page
    status, page, _ = await served.get("/messages", params={"status": "nonsense"})
    assert status == 400 and "status must be one of" in page

    status, page, _ = await served.get(f"/messages/{good.id}")
    assert status == 200
    timeline = page.split("<h2>Timeline</h2>", 1)[1]
    assert timeline.index(">queued<") < timeline.index(">dispatched<")
    assert "alice@example.net" in timeline

    status, page, _ = await served.get("/failed")
    assert status == 200
    recorded, folder = page.split("In the failed folder", 1)
    assert bad.id in recorded and "no such user" in recorded
    assert bad.id in folder and "delivery" in folder
    assert f"mqd failed retry {bad.id}" not in folder  # the hint names no id here

    status, page, _ = await served.get(f"/messages/{bad.id}")
    assert "In the failed folder" in page and f"mqd failed retry {bad.id}" in page

    status, page, _ = await served.get("/messages/0123456789abcdef01234")
    assert status == 404 and "No message" in page


async def test_the_page_of_a_queued_message_not_read_yet_reads_it(served: Served) -> None:
    """A message listed in the backlog (a large queue at start-up) is read to be shown."""
    daemon = served.daemon
    daemon.scheduler.concurrency = 0  # nothing is leased meanwhile: the page alone reads it
    key = daemon.config.spools[0].key
    entry_id = new_message_id()
    body_dir = daemon.store.layout.messages_dir / key
    body_dir.mkdir(parents=True, exist_ok=True)
    (body_dir / f"{entry_id}.eml").write_bytes(make_message(to=("unread@example.net",)))
    daemon.store.backlog.add(key, [entry_id])
    status, page, _ = await served.get(f"/messages/{entry_id}")
    assert status == 200 and "In the queue" in page and "app@example.com" in page
    assert entry_id not in daemon.store.backlog


HOSTILE = '<script>alert("x")</script>'


async def test_the_pages_escape_hostile_values(served: Served) -> None:
    sent = await served.send(to=("alice@example.net",), subject=HOSTILE)
    # A provider's event is the most exposed input: a bounce diagnostic, a recipient, a URL.
    event = {
        "status": "bounced",
        "event_id": "ev-hostile",
        "mqd_id": sent.id,
        "recipient": '"<img src=x onerror=alert(1)>"@example.net',
        "reply": "550 <b onmouseover=alert(2)>gone</b>",
        "detail": {"url": "javascript:alert(3)//<svg onload=alert(4)>"},
    }
    assert await post_events(served, [event]) == (200, "taken")
    await served.recorded(sent.id, "bounced")
    raw = ("<script>", "<img src=x", "<b onmouseover", "<svg onload")
    pages = [
        f"/messages/{sent.id}",
        "/messages",
        "/failed",
        f"/messages?q={quote(HOSTILE)}",
    ]
    for path in pages:
        status, page, _ = await served.get(path)
        assert status == 200, path
        for needle in raw:
            assert needle not in page, (path, needle)
    status, page, _ = await served.get(f"/messages/{sent.id}")
    assert "&lt;b onmouseover=alert(2)&gt;gone&lt;/b&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;svg onload=alert(4)&gt;" in page
    status, page, _ = await served.get("/messages", params={"q": HOSTILE})
    assert 'value="&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"' in page
