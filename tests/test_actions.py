"""An operator's actions in the web view (``/queue``): hold, release, retry, delete and bounce,
each behind an operator sign-in, the session's CSRF token and a confirmation, against a real
daemon over HTTP; and the operator sessions themselves on an injected clock."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from corehelpers import drop, make_message

from mqd.clock import ManualClock
from mqd.config.load import load_config
from mqd.daemon.root import Daemon
from mqd.errors import ConfigError
from mqd.http.operator import OPERATOR_COOKIE, SESSION_LIFETIME, Sessions
from mqd.message.reply import Reply
from mqd.plugins.host import PluginHost
from mqd.queue.store import UnknownEntry
from mqd.relays.memory import MemoryRelay
from mqd.testing import wait_until

TOKEN = "read-token-for-the-action-tests-1f"
OPERATOR = "operator-token-for-the-action-tests-9c"
LATER = "later@example.net"

CONFIG = """
[queue]
dir = "{queue}"
bounce_sender = "mailer-daemon@mqd.test"
scan_interval = "1s"
retry = {{ initial = "1h", max = "2h" }}

[http]
enabled = true
port = 0
{http}

[[spool]]
path = "{spool}"
relay = "main"
allowed_senders = ["*@example.com"]

[relays.main]
plugin = "memory"
"""


@pytest.fixture
def make_daemon(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path
) -> Callable[[str], Daemon]:
    def make(http: str = f'token = "{TOKEN}"\noperator_token = "{OPERATOR}"') -> Daemon:
        config = load_config(write_config(CONFIG.format(queue=queue_dir, spool=spool, http=http)))
        return Daemon(config, host=PluginHost(entry_points=False), shutdown_timeout=5)

    return make


class Browser:
    """An HTTP client with its own cookies, on the daemon's view."""

    def __init__(self, daemon: Daemon, session: aiohttp.ClientSession) -> None:
        self.daemon = daemon
        self.session = session

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str]:
        async with self.session.get(path, **kwargs) as response:
            return response.status, await response.text()

    async def post(self, path: str, data: Any, **kwargs: Any) -> tuple[int, str]:
        async with self.session.post(path, data=data, allow_redirects=False, **kwargs) as r:
            return r.status, await r.text()

    async def sign_in(self, token: str = OPERATOR) -> aiohttp.ClientResponse:
        async with self.session.post(
            "/operator/login", data={"token": token}, allow_redirects=False
        ) as response:
            await response.read()
            return response

    async def csrf(self) -> str:
        status, page = await self.get("/queue")
        assert status == 200
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        assert found is not None, "no CSRF token on /queue: not signed in?"
        return found.group(1)


@pytest.fixture
async def daemon(make_daemon: Callable[[], Daemon]) -> AsyncIterator[Daemon]:
    daemon = make_daemon()
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        MemoryRelay.instances["main"].replies[LATER] = Reply(451, "try again later", "4.3.0")
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def browser(daemon: Daemon) -> AsyncIterator[Browser]:
    assert daemon.http is not None
    jar = aiohttp.CookieJar(unsafe=True)  # keep cookies of 127.0.0.1
    async with aiohttp.ClientSession(base_url=daemon.http.url, cookie_jar=jar) as session:
        yield Browser(daemon, session)


async def state_of(daemon: Daemon, entry_id: str) -> str | None:
    """The entry's state in the queue; None once it left it."""
    try:
        return (await daemon.store.get(entry_id)).state.value
    except UnknownEntry:
        return None


async def deferred(daemon: Daemon, sender: str = "app@example.com") -> str:
    """Drop a message the relay defers; its queue id once it waits for its retry in an hour."""
    data = make_message(sender, to=(LATER,))
    message_id = re.search(rb"Message-ID: (<[^>]+>)", data)
    assert message_id is not None
    drop(daemon.config.spools[0].path, data)

    async def found() -> str | None:
        for row in await daemon.admin.op_list(state="deferred"):
            if row["attempts"] >= 1 and row["sender"] == sender:
                return str(row["id"])
        return None

    return str(await wait_until(found, "the message deferred in the queue"))


async def act(browser: Browser, action: str, ids: list[str], **extra: str) -> tuple[int, str]:
    data = [("csrf", await browser.csrf()), ("action", action), *(("id", i) for i in ids)]
    return await browser.post("/queue", data + list(extra.items()))


# -- refused ---------------------------------------------------------------------------------------


async def test_without_an_operator_the_queue_shows_but_no_action_is_taken(
    browser: Browser,
) -> None:
    entry = await deferred(browser.daemon)
    status, page = await browser.get("/queue")
    assert status == 200 and entry in page and "deferred" in page
    assert 'name="action"' not in page and 'type="checkbox"' not in page
    assert 'href="/operator/login"' in page
    # A local browser without a session, with or without a form's fields, is refused.
    for data in ({"action": "hold", "id": entry}, {"action": "hold", "id": entry, "csrf": "x"}):
        status, page = await browser.post("/queue", {**data, "confirm": "yes"})
        assert status == 403 and "operator" in page
    # So is a read-token session (Bearer or its cookie): reading is not acting.
    status, _ = await browser.post(
        "/queue",
        {"action": "hold", "id": entry, "confirm": "yes"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert status == 403
    assert await state_of(browser.daemon, entry) == "deferred"


async def test_signing_in_takes_the_operator_token_not_the_read_token(browser: Browser) -> None:
    for wrong in (TOKEN, "nope", ""):
        response = await browser.sign_in(wrong)
        assert response.status == 403, wrong
        assert OPERATOR_COOKIE not in response.cookies
    response = await browser.sign_in()
    assert response.status == 303 and response.headers["Location"] == "/queue"
    cookie = response.cookies[OPERATOR_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and not cookie["secure"]
    assert OPERATOR not in cookie.value
    status, page = await browser.get("/queue")
    assert status == 200 and "Signed in as operator" in page
    assert 'name="action" value="hold"' in page
    # Over TLS at a proxy, the cookie is sent over TLS only.
    async with browser.session.post(
        "/operator/login",
        data={"token": OPERATOR},
        headers={"X-Forwarded-Proto": "https"},
        allow_redirects=False,
    ) as response:
        assert response.status == 303 and response.cookies[OPERATOR_COOKIE]["secure"]


async def test_a_missing_or_wrong_csrf_token_is_refused(browser: Browser) -> None:
    entry = await deferred(browser.daemon)
    await browser.sign_in()
    good = await browser.csrf()
    other = Browser(browser.daemon, browser.session)
    await other.sign_in()  # a new session: the old token is not its token
    for csrf in (None, "", good[:-1] + ("0" if good[-1] != "0" else "1"), good):
        data = {"action": "hold", "id": entry, "confirm": "yes"}
        if csrf is not None:
            data["csrf"] = csrf
        status, page = await browser.post("/queue", data)
        assert status == 403 and "CSRF" in page, csrf
    assert await state_of(browser.daemon, entry) == "deferred"


async def test_an_action_asks_for_a_confirmation_first(browser: Browser) -> None:
    entry = await deferred(browser.daemon)
    await browser.sign_in()
    status, page = await act(browser, "delete", [entry])
    assert status == 200 and "Delete 1 message(s)?" in page and "no bounce" in page
    assert 'name="confirm" value="yes"' in page and entry in page
    assert await state_of(browser.daemon, entry) == "deferred"  # nothing done yet
    status, page = await act(browser, "hold", [])
    assert status == 400 and await state_of(browser.daemon, entry) == "deferred"
    status, page = await act(browser, "explode", [entry], confirm="yes")
    assert status == 400 and await state_of(browser.daemon, entry) == "deferred"


# -- each action -----------------------------------------------------------------------------------


async def test_hold_release_and_retry_take_effect(browser: Browser) -> None:
    daemon = browser.daemon
    entry = await deferred(daemon)
    await browser.sign_in()

    status, page = await act(browser, "hold", [entry], confirm="yes")
    assert status == 200 and "Held: 1 message(s)" in page and entry in page
    assert await state_of(daemon, entry) == "held"

    status, page = await act(browser, "release", [entry], confirm="yes")
    assert status == 200 and "Released: 1 message(s)" in page
    assert await state_of(daemon, entry) != "held"  # released: tried at once, deferred again
    await wait_until(lambda: _deferred_again(daemon, entry), "the released message deferred again")

    # Retry: due now instead of in an hour; the relay takes it this time.
    MemoryRelay.instances["main"].replies.pop(LATER)
    status, page = await act(browser, "retry", [entry], confirm="yes")
    assert status == 200 and "Retried: 1 message(s)" in page
    assert await wait_until(lambda: _gone(daemon, entry), "the retried message delivered")
    assert any(LATER in env.recipients for env in MemoryRelay.instances["main"].sent)

    status, page = await act(browser, "hold", ["0123456789abcdef01234"], confirm="yes")
    assert status == 409 and "no message" in page


async def _deferred_again(daemon: Daemon, entry: str) -> bool:
    item = await daemon.store.get(entry)
    return item.state.value == "deferred" and item.entry.attempts >= 2


async def _gone(daemon: Daemon, entry: str) -> bool:
    return await state_of(daemon, entry) is None


async def test_delete_and_bounce_take_effect(browser: Browser) -> None:
    daemon = browser.daemon
    doomed = await deferred(daemon, "doomed@example.com")
    returned = await deferred(daemon, "returned@example.com")
    await browser.sign_in()

    status, page = await act(browser, "delete", [doomed], confirm="yes")
    assert status == 200 and "Deleted: 1 message(s)" in page
    assert await state_of(daemon, doomed) is None
    assert daemon.tracker is not None
    history = await wait_until(
        lambda: _status_is(daemon, doomed, "deleted"), "the deletion in the event store"
    )
    assert history

    status, page = await act(browser, "bounce", [returned], confirm="yes")
    assert status == 200 and "Bounced: 1 message(s)" in page
    assert await state_of(daemon, returned) is None
    assert await daemon.store.failed.find([returned])  # in the failed folder
    await wait_until(
        lambda: _bounce_sent_to(daemon, "returned@example.com"), "the bounce to the sender"
    )


async def _status_is(daemon: Daemon, entry: str, status: str) -> bool:
    assert daemon.tracker is not None
    history = await daemon.tracker.message(entry)
    return history is not None and history.status == status


async def _bounce_sent_to(daemon: Daemon, sender: str) -> bool:
    return any(sender in env.recipients for env in MemoryRelay.instances["main"].sent)


# -- sessions --------------------------------------------------------------------------------------


async def test_an_operator_session_lets_a_remote_browser_read_and_signs_out(
    browser: Browser,
) -> None:
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    status, _ = await browser.get("/", headers=proxied)
    assert status == 403
    await browser.sign_in()
    status, _ = await browser.get("/", headers=proxied)
    assert status == 200
    kept = browser.session.cookie_jar.filter_cookies(browser.session._base_url)  # type: ignore[arg-type]
    old = kept[OPERATOR_COOKIE].value
    csrf = await browser.csrf()
    status, _ = await browser.post("/operator/logout", {"csrf": csrf})
    assert status == 303
    status, _ = await browser.get("/", headers=proxied)
    assert status == 403
    # The cookie of the signed-out session is no good any more, even if kept.
    status, _ = await browser.get("/", headers={**proxied, "Cookie": f"{OPERATOR_COOKIE}={old}"})
    assert status == 403


def test_sessions_expire_and_end_with_a_new_token() -> None:
    clock = ManualClock()
    token = ["first-operator-token"]
    sessions = Sessions(lambda: token[0], clock)
    response = web.Response()
    issued = sessions.issue(response, make_mocked_request("POST", "/operator/login"))
    value = response.cookies[OPERATOR_COOKIE].value

    def request(cookie: str) -> web.Request:
        cookies = {"Cookie": f"{OPERATOR_COOKIE}={cookie}"}
        return make_mocked_request("GET", "/queue", headers=cookies)

    session = sessions.of(request(value))
    assert session is not None and session.csrf == issued.csrf
    assert sessions.csrf_ok(session, issued.csrf) and not sessions.csrf_ok(session, "x")
    session_id, issued_at, mac = value.split(".")
    forged = f"{session_id}.{int(issued_at) + 3600}.{mac}"  # a later start, same MAC
    assert sessions.of(request(forged)) is None
    clock.advance(SESSION_LIFETIME - 1)
    assert sessions.of(request(value)) is not None
    clock.advance(2)
    assert sessions.of(request(value)) is None  # expired
    clock.set(clock.time() - 10)
    token[0] = "another-operator-token"
    assert sessions.of(request(value)) is None  # the token changed


def test_the_operator_token_must_differ_from_the_read_token(
    make_daemon: Callable[[str], Daemon],
) -> None:
    with pytest.raises(ConfigError, match="operator_token"):
        make_daemon(f'token = "{TOKEN}"\noperator_token = "{TOKEN}"')


async def test_without_an_operator_token_nobody_can_act(
    make_daemon: Callable[[str], Daemon],
) -> None:
    daemon = make_daemon(f'token = "{TOKEN}"')
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        assert daemon.http is not None
        async with aiohttp.ClientSession(base_url=daemon.http.url) as session:
            browser = Browser(daemon, session)
            response = await browser.sign_in(TOKEN)
            assert response.status == 403
            status, page = await browser.get("/queue")
            assert status == 200 and "operator_token_file" in page
            status, _ = await browser.post("/queue", {"action": "hold", "id": "x"})
            assert status == 403
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)


async def test_a_new_operator_token_at_reload_signs_operators_out(
    browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = browser.daemon
    await browser.sign_in()
    assert "Signed in as operator" in (await browser.get("/queue"))[1]
    source = daemon.config.source
    assert source is not None
    text = source.read_text().replace(OPERATOR, "a-new-operator-token-after-reload")
    source.write_text(text)
    await daemon.reload()
    assert "[http] changed" not in caplog.text  # applied now, not at the next restart
    status, page = await browser.get("/queue")
    assert status == 200 and "Sign in as operator" in page  # the old session is gone
    assert (await browser.sign_in()).status == 403
    assert (await browser.sign_in("a-new-operator-token-after-reload")).status == 303


async def test_the_queue_page_escapes_what_the_message_and_the_server_say(
    browser: Browser,
) -> None:
    hostile = '<script>alert("q")</script>'
    MemoryRelay.instances["main"].replies[LATER] = Reply(451, hostile, "4.3.0")
    entry = await deferred(browser.daemon)
    await browser.sign_in()
    for path in ("/queue", "/queue?state=deferred"):
        status, page = await browser.get(path)
        assert status == 200 and entry in page
        assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;q&quot;)" in page
    status, page = await act(browser, "hold", [entry])  # the confirmation shows it too
    assert status == 200 and "<script>alert" not in page
