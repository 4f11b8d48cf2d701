"""Issue 25, items 12 and 13: the Subject everywhere, a message's content on its page (headers,
text, HTML in a sandboxed frame under a policy that loads nothing, attachments), the outbox
folder as a local mail catcher, human times, each recipient's own last reply, a relay's health
from its recent attempts, and a file that is not a message never called a bounce.

A real daemon with ``[http]`` on port 0, asked over HTTP; the pure parts (decoding, times, the
health verdict, the schema upgrade) directly.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from corehelpers import drop
from openapi_schema_validator import OAS31Validator
from openapi_schema_validator import validate as validate_schema

from mqd.config.load import load_config
from mqd.daemon.root import Daemon
from mqd.delivery.health import Attempt, verdict
from mqd.http.openapi import openapi
from mqd.http.present import detail_html, moment, relative, sender_html
from mqd.message.content import decoded_header, inline_images, read_content, subject_of
from mqd.message.reply import Reply
from mqd.plugins.host import PluginHost
from mqd.producer.inject import inject
from mqd.relays.memory import MemoryRelay
from mqd.testing import wait_until
from mqd.tracking.answers import MessageHistory, MessageSummary
from mqd.tracking.schema import SCHEMA_VERSION
from mqd.tracking.sqlite import SQLiteStore

SUBJECT_2047 = "=?utf-8?q?Gr=C3=BC=C3=9Fe_<b>&_co</b>?="
SUBJECT = "Grüße <b>& co</b>"
HTML = (
    "<html><body><h1 style='color:#a00'>Your order</h1>"
    "<script>document.title='pwned'</script>"
    "<img src='https://tracker.example.net/pixel.gif' alt=pixel>"
    "<p>Thanks!</p></body></html>"
)


def rich_message(
    to: tuple[str, ...] = ("alice@example.net",), sender: str = "app@example.com"
) -> bytes:
    """A multipart/mixed message: text and HTML alternatives, and a PDF attached."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = "placeholder"
    message["Date"] = formatdate()
    message["Message-ID"] = make_msgid(domain="example.com")
    message.set_content("Thanks for your order.\nIt ships tomorrow.\n")
    message.add_alternative(HTML, subtype="html")
    message.add_attachment(
        b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="invoice 42.pdf"
    )
    data = message.as_bytes()
    return data.replace(b"Subject: placeholder", f"Subject: {SUBJECT_2047}".encode())


# -- the pure parts -------------------------------------------------------------------------------


def test_a_subject_is_decoded_into_one_line() -> None:
    assert decoded_header(SUBJECT_2047) == SUBJECT
    assert decoded_header("=?iso-8859-1?b?Q2Fm6Q==?= au lait") == "Café au lait"
    assert decoded_header("two\r\n lines\tand a tab") == "two lines and a tab"
    assert decoded_header("=?bogus-charset?q?x?=") == "=?bogus-charset?q?x?="
    assert decoded_header("x" * 400).endswith("…") and len(decoded_header("x" * 400)) == 300
    assert subject_of(rich_message()) == SUBJECT
    assert subject_of(b"not a message at all") == ""


def test_the_content_of_a_message_is_its_headers_text_html_and_attachments() -> None:
    content = read_content(b"X-Sender: <a@example.com>\r\n" + rich_message())
    assert content.problem is None and content.subject == SUBJECT
    names = [name for name, _ in content.headers]
    assert names[:2] == ["X-Sender", "From"] and "Subject" in names
    assert ("Subject", SUBJECT) in content.headers
    assert content.text is not None and "It ships tomorrow." in content.text
    assert content.html is not None and "<h1 style='color:#a00'>" in content.html
    [pdf] = content.attachments
    assert pdf.filename == "invoice 42.pdf" and pdf.content_type == "application/pdf"
    assert pdf.size == len(b"%PDF-1.4 fake")


def test_the_messages_own_images_are_put_in_as_data_urls() -> None:
    message = EmailMessage()
    message["From"] = "app@example.com"
    message["To"] = "alice@example.net"
    message["Subject"] = "logo"
    message.set_content("see the logo")
    message.add_alternative(
        '<p><img src="cid:logo@x"> <img src="cid:missing@x"> '
        '<img src="https://remote.example.net/a.png"></p>',
        subtype="html",
    )
    html_part = message.get_payload()[1]  # type: ignore[index]
    html_part.add_related(b"\x89PNG fake", maintype="image", subtype="png", cid="<logo@x>")
    data = message.as_bytes()
    content = read_content(data)
    assert content.html is not None
    [logo] = content.attachments
    assert logo.content_id == "logo@x" and logo.content_type == "image/png"
    html = inline_images(content.html, data, content)
    assert 'src="data:image/png;base64,iVBORyBmYWtl"' in html
    assert 'src="cid:missing@x"' in html and "https://remote.example.net/a.png" in html


@pytest.mark.parametrize(
    ("data", "why"),
    [(b"", "empty"), (b"\x00\x01binary", "NUL"), (b"just some words\n", "not a header")],
)
def test_a_file_that_is_not_a_message_says_why(data: bytes, why: str) -> None:
    content = read_content(data)
    assert content.problem is not None and why in content.problem
    assert content.attachments == [] and content.html is None


def test_times_are_said_as_people_say_them() -> None:
    now = 1_800_000_000.0
    assert relative(now + 180, now) == "in 3 min"
    assert relative(now - 7200, now) == "2 h ago"
    assert relative(now - 5400, now) == "1 h 30 min ago"
    assert relative(now - 3 * 86400, now) == "3 d ago"
    assert relative(now + 1, now) == "just now"
    html = moment(now + 180, now)
    assert html.startswith('<time datetime="2027-01-15T08:03:00Z" title="')
    assert html.endswith(">in 3 min</time>")
    assert moment(None) == "" and moment(0) == "" and moment(True) == ""
    # An event's detail: no raw epoch such as next_attempt_at=1796647351.6.
    detail = detail_html({"next_attempt_at": now + 180.6, "route": ["a", "b"]}, now)
    assert "1800000180" not in detail and "next attempt <time" in detail
    assert ">in 3 min</time>" in detail and "route=a b" in detail


def test_a_file_that_is_not_a_message_is_never_called_a_bounce() -> None:
    assert sender_html("") == "&lt;&gt; (a bounce)"
    shown = sender_html("", "the file contains NUL bytes")
    assert "not a message" in shown and "NUL bytes" in shown and "bounce" not in shown
    assert "unknown" in sender_html(None)
    assert sender_html("<x>@example.com") == "&lt;x&gt;@example.com"


def test_a_relay_is_healthy_only_while_it_delivers() -> None:
    def attempts(*results: str) -> list[Attempt]:
        return [Attempt(float(n), r, "451 4.3.0 busy") for n, r in enumerate(results)]  # type: ignore[arg-type]

    assert verdict("closed", []) == "idle"
    assert verdict("unknown", attempts("delivered")) == "unknown"
    assert verdict("closed", attempts("failed", "failed", "failed")) == "failing"
    assert verdict("closed", attempts("refused", "refused")) == "failing"
    assert verdict("open", attempts("delivered")) == "failing"
    assert verdict("half-open", []) == "failing"
    assert verdict("closed", attempts("delivered", "failed")) == "degraded"
    assert verdict("closed", attempts("failed", "failed", "delivered")) == "degraded"
    assert verdict("closed", attempts("failed", "delivered", "delivered")) == "healthy"
    # A recipient refused by name (550 no such user) is the recipient's problem.
    assert verdict("closed", attempts("delivered", "refused")) == "healthy"


def test_an_event_store_of_schema_1_gains_the_subject(tmp_path: Path) -> None:
    path = tmp_path / "tracking.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE messages (id TEXT PRIMARY KEY, message_id TEXT,
            sender TEXT NOT NULL DEFAULT '', status TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL);
        CREATE TABLE recipients (message TEXT NOT NULL, address TEXT NOT NULL,
            status TEXT NOT NULL, rank INTEGER NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL, relay TEXT, provider_id TEXT, reply TEXT,
            PRIMARY KEY (message, address));
        CREATE TABLE events (seq INTEGER PRIMARY KEY, message TEXT NOT NULL, recipient TEXT,
            status TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, source TEXT NOT NULL,
            relay TEXT, provider_id TEXT, reply TEXT, detail TEXT NOT NULL DEFAULT '{}',
            event_key TEXT UNIQUE);
        CREATE TABLE cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
        INSERT INTO messages VALUES ('old', '<o@x>', 'a@example.com', 'queued', 1.0, 1.0);
        """
    )
    db.commit()
    db.close()
    store = SQLiteStore(path)
    try:
        [old] = store.recent_messages(limit=5)
        assert old.id == "old" and old.subject is None and old.not_a_message is None
        version = store._db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        assert version[0] == str(SCHEMA_VERSION) == "3"
    finally:
        store.close()


# -- a daemon ---------------------------------------------------------------------------------


CONFIG = """
[queue]
dir = "{queue}"
bounce_sender = "mailer-daemon@mqd.test"
scan_interval = "1s"
retry = {{ initial = "1h", max = "2h" }}

[http]
enabled = true
port = 0

[[spool]]
path = "{spool}"
relay = "outbox"
allowed_senders = ["*@example.com"]

[[spool]]
path = "{spool2}"
relay = "main"
allowed_senders = ["*@example.com"]

[relays.outbox]
plugin = "outbox"
path = "{outbox}"

[relays.main]
plugin = "memory"
"""


class Served:
    def __init__(self, daemon: Daemon, session: aiohttp.ClientSession, outbox: Path) -> None:
        self.daemon = daemon
        self.session = session
        self.outbox = outbox

    @property
    def catcher_spool(self) -> Path:
        return self.daemon.config.spools[0].path

    @property
    def memory_spool(self) -> Path:
        return self.daemon.config.spools[1].path

    async def recorded(self, key: str, status: str) -> MessageHistory:
        tracker = self.daemon.tracker
        assert tracker is not None

        async def shown() -> MessageHistory | None:
            found = await tracker.message(key)
            return found if found is not None and found.status == status else None

        found = await wait_until(shown, f"{key} to show {status}", 15)
        assert found is not None
        return found

    async def send(self, spool: Path, data: bytes, status: str) -> MessageHistory:
        found = re.search(rb"Message-ID: (<[^>]+>)", data)
        assert found is not None
        drop(spool, data)
        return await self.recorded(found.group(1).decode(), status)

    async def get(self, path: str) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.session.get(path) as response:
            if response.content_type == "application/json":
                return response.status, await response.json(), response
            return response.status, await response.read(), response


@pytest.fixture
async def served(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path, tmp_path: Path
) -> AsyncIterator[Served]:
    spool2 = tmp_path / "spool2"
    spool2.mkdir()
    outbox = tmp_path / "outbox"
    text = CONFIG.format(queue=queue_dir, spool=spool, spool2=spool2, outbox=outbox)
    daemon = Daemon(load_config(write_config(text)), host=PluginHost(entry_points=False))
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        assert daemon.http is not None
        async with aiohttp.ClientSession(base_url=daemon.http.url) as session:
            yield Served(daemon, session, outbox)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)


def conforms(instance: Any, schema: str) -> None:
    root = {"$ref": f"#/components/schemas/{schema}", "components": openapi()["components"]}
    validate_schema(instance, root, cls=OAS31Validator)


async def test_the_outbox_is_a_mail_catcher_with_subject_headers_text_html_and_files(
    served: Served,
) -> None:
    caught = await served.send(served.catcher_spool, rich_message(), "dispatched")
    assert caught.subject == SUBJECT
    assert (served.outbox / f"{caught.id}.eml").exists()

    # Lists: the subject decoded and escaped.
    escaped = "Grüße &lt;b&gt;&amp; co&lt;/b&gt;"
    for path in ("/messages", f"/messages?q={caught.id}"):
        status, body, _ = await served.get(path)
        page = body.decode()
        assert status == 200 and escaped in page and "<b>&" not in page, path

    # The message page, read from the outbox folder.
    status, body, response = await served.get(f"/messages/{caught.id}")
    page = body.decode()
    assert status == 200
    assert f'the outbox folder of relay outbox <span class="mono">{served.outbox}' in page
    assert escaped in page and "<b>&" not in page
    assert "<th>Name</th><th>Value</th>" in page and "X-Sender" in page
    assert "It ships tomorrow." in page
    assert f'<iframe class="mail" sandbox src="/messages/{caught.id}/html"' in page
    assert "<script>" not in page  # the HTML part is only in its frame
    assert f'href="/messages/{caught.id}/parts/' in page and "invoice 42.pdf" in page
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-src 'self'" in policy
    assert "script-src" not in policy

    # The frame's own document: nothing remote, no script, sandboxed.
    status, body, response = await served.get(f"/messages/{caught.id}/html")
    assert status == 200 and b"<h1 style='color:#a00'>Your order</h1>" in body
    policy = response.headers["Content-Security-Policy"]
    directives = {d.strip().split(" ")[0]: d.strip() for d in policy.split(";")}
    assert directives["default-src"] == "default-src 'none'"
    assert directives["img-src"] == "img-src data:" and "sandbox" in directives
    assert "script-src" not in directives and "https:" not in policy and "*" not in policy
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"

    # The attachment: a download, never shown or sniffed.
    [link] = re.findall(rf'href="(/messages/{caught.id}/parts/\d+)"', page)
    status, body, response = await served.get(link)
    assert status == 200 and body == b"%PDF-1.4 fake"
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="invoice 42')
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert (await served.get(f"/messages/{caught.id}/parts/99"))[0] == 404
    assert (await served.get("/messages/..%2Fetc/html"))[0] == 404

    # With no history (pruned, or tracking off) the outbox file still makes the page.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Daemon, "tracker", property(lambda self: None))
        status, body, _ = await served.get(f"/messages/{caught.id}")
    assert status == 200 and "It ships tomorrow." in body.decode()
    assert "Tracking is off: there is no timeline." in body.decode()
    assert (await served.get("/messages/0190000000aaaaaaaaaaa"))[0] == 404

    # The whole message, as a download.
    status, body, response = await served.get(f"/messages/{caught.id}/raw")
    assert status == 200 and body.startswith(b"X-Sender: <app@example.com>")
    assert response.headers["Content-Disposition"] == f'attachment; filename="{caught.id}.eml"'
    assert response.headers["Content-Type"] == "application/octet-stream"

    # The API: the subject in the typed answers (and so in the document).
    status, listed, _ = await served.get("/api/v1/messages")
    assert status == 200 and listed["messages"][0]["subject"] == SUBJECT
    conforms(listed, "MessageList")
    status, one, _ = await served.get(f"/api/v1/messages/{caught.id}")
    assert one["subject"] == SUBJECT and one["not_a_message"] is None
    summary = openapi()["components"]["schemas"]["MessageSummary"]["properties"]
    assert summary["subject"]["type"] == ["string", "null"]


async def test_each_recipient_shows_its_own_last_reply_and_times_are_human(
    served: Served,
) -> None:
    relay = MemoryRelay.instances["main"]
    relay.replies["bob@example.net"] = Reply(451, "greylisted, come back later", "4.7.1")
    message = rich_message(to=("alice@example.net", "bob@example.net"))
    queued = await served.send(served.memory_spool, message, "deferred")

    status, body, _ = await served.get(f"/messages/{queued.id}")
    page = body.decode()
    assert status == 200
    section = page.split("<h3>Its recipients</h3>", 1)[1].split("</table>", 1)[0]
    rows = {re.sub(r"<[^>]+>", "", row.split("</td>")[0]): row for row in section.split("<tr>")[2:]}
    assert "250" in rows["alice@example.net"] and "greylisted" not in rows["alice@example.net"]
    assert "451 4.7.1 greylisted" in rows["bob@example.net"]
    assert (
        "Last reply"
        not in page.split("<h3>Its recipients</h3>", 1)[0].split("<h2>In the queue</h2>")[1]
    )
    # Human times: the next attempt in about an hour, no raw epoch anywhere on the page.
    next_attempt = r'Next attempt</th><td><time datetime="[0-9T:-]+Z" title="[^"]+">in (59 min|1 h)'
    assert re.search(next_attempt, page)
    # (a Message-ID holds long numbers too: an epoch is a cell's or a detail's whole value)
    assert not re.search(r"(=|>)1[0-9]{9}(\.[0-9]+)?(<|,|\s)", page), "a raw epoch"
    assert "next attempt <time" in page  # the deferred event's detail

    # The list: each recipient with its own reply.
    status, body, _ = await served.get("/messages")
    listing = body.decode()
    alice = listing.split("alice@example.net", 1)[1].split("</li>", 1)[0]
    bob = listing.split("bob@example.net", 1)[1].split("</li>", 1)[0]
    assert "greylisted" not in alice and "451 4.7.1 greylisted" in bob
    assert re.search(r"<time datetime=[^>]+>(just now|\d+ s ago)</time>", listing)

    # The queue page: the subject, each recipient's own reply, when the next attempt is.
    status, body, _ = await served.get("/queue")
    queue_page = body.decode()
    assert status == 200 and "Grüße &lt;b&gt;&amp; co&lt;/b&gt;" in queue_page
    alice = queue_page.split("alice@example.net", 1)[1].split("</li>", 1)[0]
    bob = queue_page.split("bob@example.net", 1)[1].split("</li>", 1)[0]
    assert "greylisted" not in alice and "451 4.7.1 greylisted" in bob
    assert "<th>Last reply</th>" not in queue_page
    assert re.search(r"<time datetime=[^>]+>in (59 min|1 h)", queue_page)

    # One attempt, which delivered to alice (bob was deferred): the relay delivers, healthy.
    status, document, _ = await served.get("/api/v1/status")
    main = document["relays"]["main"]
    assert main["health"] == "healthy" and main["recent_attempts"] == 1
    assert main["last_success_at"] is not None


async def test_a_relay_that_only_fails_is_failing_everywhere(served: Served) -> None:
    relay = MemoryRelay.instances["main"]
    for rcpt in ("alice@example.net", "bob@example.net"):
        relay.replies[rcpt] = Reply(451, "mailbox busy", "4.2.1")
    await served.send(served.memory_spool, rich_message(to=("alice@example.net",)), "deferred")
    await served.send(served.memory_spool, rich_message(to=("bob@example.net",)), "deferred")

    status, document, _ = await served.get("/api/v1/status")
    assert status == 200
    conforms(document, "QueueStatus")
    main = document["relays"]["main"]
    assert main["health"] == "failing" and main["circuit"] == "closed"
    assert main["recent_attempts"] == main["recent_failures"] == 2
    assert main["last_error"] == "451 4.2.1 mailbox busy"
    assert document["relays"]["outbox"]["health"] == "idle"

    _, body, _ = await served.get("/")
    overview = body.decode()
    row = overview.split("<td>main</td>", 1)[1].split("</tr>", 1)[0]
    assert '<span class="st st-bad">failing</span>' in row and "mailbox busy" in row
    assert "2 of 2 failed" in row and "healthy" not in row


async def test_a_spool_file_that_is_not_a_message_is_labelled_so(served: Served) -> None:
    written = inject(served.memory_spool, b"\x00\x01\x02 binary junk\n")
    tracker = served.daemon.tracker
    assert tracker is not None

    async def rejected_first() -> list[MessageSummary] | None:
        found = await tracker.recent(limit=5)
        return found if found and found[0].status == "rejected" else None

    found = await wait_until(rejected_first, f"{written} to be rejected", 15)
    assert found is not None
    [rejected] = found
    assert rejected.not_a_message is not None and "NUL" in rejected.not_a_message

    for path in ("/messages", "/failed", f"/messages/{rejected.id}"):
        status, body, _ = await served.get(path)
        page = body.decode()
        assert status == 200, path
        assert "(a bounce)" not in page, path
        assert "not a message</span>" in page and "NUL bytes" in page, path
    status, one, _ = await served.get(f"/api/v1/messages/{rejected.id}")
    assert one["not_a_message"] == rejected.not_a_message


def test_the_command_line_lists_show_the_subject_too() -> None:
    from mqd.admin.render import render_queue
    from mqd.tracking.answers import MessageHistory
    from mqd.tracking.render import history_lines
    from mqd.tracking.vocabulary import Status

    row = {
        "id": "q1",
        "state": "deferred",
        "sender": "app@example.com",
        "subject": SUBJECT,
        "recipients": [{"address": "a@example.net", "status": "pending", "reply": "451 busy"}],
        "size": 10,
        "attempts": 1,
        "next_attempt_at": 2e9,
        "age": 5.0,
    }
    lines = render_queue([row], 1.9e9)
    assert lines[1].startswith("q1") and lines[2] == f"    subject: {SUBJECT}"

    def history(**changes: Any) -> MessageHistory:
        values: dict[str, Any] = {
            "id": "q1",
            "message_id": None,
            "sender": "",
            "subject": None,
            "not_a_message": None,
            "account": None,
            "status": Status.REJECTED,
            "created_at": 1.0,
            "updated_at": 1.0,
            "recipients": [],
            "events": [],
        }
        return MessageHistory(**{**values, **changes})

    assert "  from: <>" in history_lines(history())
    shown = history_lines(history(not_a_message="the file is empty", subject=None))
    assert "  not a message: the file is empty" in shown and "  from: <>" not in shown
    assert "  subject: Hi" in history_lines(history(subject="Hi", sender="a@example.com"))
