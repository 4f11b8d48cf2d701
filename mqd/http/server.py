"""``HttpServer``: the daemon's aiohttp server on ``[http] host:port``.

One application serves three things: provider webhooks at ``/webhooks/<relay name>`` (open to
anyone: each webhook checks its provider's signature), and, behind ``mqd.http.access``, the JSON
API at ``/api/v1/`` and the web view at ``/``. Request bodies are capped at ``[http] max_body``
(413 beyond it). At most ``[http] max_connections`` connections are served at once and one that
sends no request's headers within ``[http] header_timeout`` (from connecting, or from its last
answer) is closed (``mqd.http.listen.ConnectionGate``): HTTP clients never take the file
descriptors the queue and the relays need. Query strings are never logged: ``/login?token=...``
carries a secret.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from html import escape
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from mqd.admin import fanout
from mqd.config.schema import HttpConfig, open_files_limit
from mqd.errors import ConfigError, TrackingError
from mqd.http import access
from mqd.http.actions import OPEN_PATHS as OPERATOR_PATHS
from mqd.http.actions import Actions
from mqd.http.api import PREFIX, Api, BadQuery, error, json_error_for
from mqd.http.charts import Charts
from mqd.http.html import SECURITY_HEADERS, forbidden_page, page
from mqd.http.listen import ConnectionGate, GatedSite, listen_error
from mqd.http.submit import SUBMIT_PATH, SubmitRoutes
from mqd.http.suppressions import SuppressionRoutes
from mqd.http.view import View
from mqd.plugins.webhooks import Webhook, WebhookRejected, WebhookRequest
from mqd.tracking.vocabulary import ProviderEvent

if TYPE_CHECKING:
    from mqd.http.site import Site
    from mqd.relays.base import Relay

__all__ = ["HttpServer"]

log = logging.getLogger("mqd.http")

#: Seconds a stop waits for requests being answered before closing their connections.
SHUTDOWN_TIMEOUT = 5.0
WEBHOOK_PREFIX = "/webhooks/"
#: Paths everybody may open: the webhooks (signed) and the sign-in page itself.
_OPEN_PATHS = ("/login", "/logout", *OPERATOR_PATHS)

#: What a browser on this machine opens for a wildcard listening address.
_BROWSABLE = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _AccessLog(AbstractAccessLogger):
    """One DEBUG line per request, without the query string (a /login token must not be
    written to a log)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.debug(
            "%s %s %s -> %d (%.1f ms)",
            request.remote,
            request.method,
            request.path,
            response.status,
            time * 1000,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


class HttpServer:
    """Serves one daemon's webhooks, API and web view.

    ``start()`` raises ConfigError (key ``http.port`` or ``http.host``) when it cannot listen;
    ``stop()`` may be called whether or not it started.
    """

    def __init__(self, site: Site) -> None:
        self.site = site
        #: The port listened on (the chosen one with ``[http] port = 0``); 0 until started.
        self.port = 0
        self._runner: web.AppRunner | None = None
        #: Each relay's webhook, asked once per relay object (a reload builds new relays).
        self._webhooks: dict[str, tuple[Relay, Webhook | None]] = {}
        #: Which connections are served (limits read once: changed by a restart, not a reload).
        self.gate = ConnectionGate(
            limit=self.config.max_connections,
            header_timeout=self.config.header_timeout,
            table="http",
            log=log,
        )
        #: The operator's actions on the queue, and who is signed in to them.
        self.actions = Actions(site)
        self.app = self._make_app()

    @property
    def config(self) -> HttpConfig:
        return self.site.config.http

    @property
    def url(self) -> str:
        """The base URL, ending in ``/``. A wildcard host is shown as its loopback address, the
        one a browser on this machine opens."""
        host = _BROWSABLE.get(self.config.host, self.config.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def _make_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.config.max_body,
            middlewares=[self.gate.middleware, self._guard],
        )
        app.router.add_route("*", WEBHOOK_PREFIX + "{relay}", self.webhook)
        app.router.add_routes(Api(self.site).routes())
        app.router.add_routes(View(self.site).routes())
        app.router.add_routes(Charts(self.site).routes())
        app.router.add_routes(self.actions.routes())
        app.router.add_routes(SuppressionRoutes(self.site).routes())
        app.router.add_routes(SubmitRoutes(self.site).routes())
        app.on_response_prepare.append(_add_headers)
        return app

    async def start(self) -> None:
        """Listen on ``[http] host:port`` (port 0: any free port, then ``self.port``)."""
        config = self.config
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log_class=_AccessLog,
            access_log=logging.getLogger("mqd.http.access"),
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            # Between requests; the gate closes a connection that never sends one.
            keepalive_timeout=self.gate.header_timeout,
        )
        await runner.setup()
        try:
            # Every worker of queue.workers listens when [http] runs in each (Config.for_worker).
            every = self.site.config.queue.workers > 1
            site = GatedSite(runner, config.host, config.port, self.gate, reuse_port=every)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise self._listen_error(config, exc) from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        files = open_files_limit()
        if files is not None and self.gate.limit > files // 2:
            log.warning(
                "[http] max_connections = %d is more than half of the %d files this process may "
                "open (ulimit -n, systemd's LimitNOFILE=): HTTP clients could leave the queue "
                "and the relays without; lower it, or raise the limit",
                self.gate.limit,
                files,
            )
        log.info(
            "serving webhooks, the API and the web view at %s (API and view: %s)",
            self.url,
            "this machine or the [http] token" if config.token else "this machine only",
        )

    def _listen_error(self, config: HttpConfig, exc: OSError) -> ConfigError:
        return listen_error(
            "http",
            "HTTP",
            config.host,
            config.port,
            exc,
            source=self.site.config.source,
            default_port=8025,
            others="another mqd, or another web server",
        )

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await runner.cleanup()
        log.debug("HTTP server closed")

    # -- access control and errors ----------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith(WEBHOOK_PREFIX) or (path == SUBMIT_PATH and request.method == "POST"):
            return await handler(request)  # signed, or a submit token (mqd.http.submit)
        is_api = path == PREFIX or path.startswith(PREFIX + "/")
        token = self.config.token.reveal() if self.config.token is not None else None
        if path not in _OPEN_PATHS and not (
            access.allowed(request, token) or self.actions.signed_in(request)
        ):
            log.debug("refused %s %s from %s", request.method, path, request.remote)
            if is_api:
                return error(403, "forbidden: " + access.refusal(token is not None))
            return forbidden_page(token is not None)
        try:
            return await handler(request)
        except BadQuery as exc:
            if is_api:
                return error(400, str(exc))
            raise web.HTTPBadRequest(text=str(exc)) from None
        except web.HTTPException as exc:
            if is_api and exc.status >= 400:
                return json_error_for(exc)
            raise
        except TrackingError as exc:  # history is paused: the tracker has said why in the log
            if is_api:
                return error(503, str(exc))
            return page(
                "History paused", f"<h1>History is paused</h1><p>{escape(str(exc))}</p>", status=503
            )
        except Exception:
            log.exception("HTTP %s %s failed", request.method, path)
            if is_api:
                return error(500, "internal error (see mqd's log)")
            return page(
                "Error",
                "<h1>Something went wrong</h1><p>mqd could not show this page; its log says why."
                "</p>",
                status=500,
            )

    # -- webhooks ---------------------------------------------------------------------------------

    def _webhook_of(self, name: str) -> Webhook | None:
        relay = self.site.relays.get(name)
        if relay is None:
            return None
        cached = self._webhooks.get(name)
        if cached is not None and cached[0] is relay:
            return cached[1]
        webhook = relay.webhook()
        self._webhooks[name] = (relay, webhook)
        return webhook

    async def webhook(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["relay"]
        peer = request.remote or "?"
        try:
            webhook = self._webhook_of(name)
        except Exception:
            log.exception("webhook %s: the relay failed to give its webhook", name)
            return web.Response(status=500, text="error")
        if webhook is None:
            return web.Response(status=404, text="no webhook here")
        if request.content_length is not None and request.content_length > self.config.max_body:
            # Refused before reading: a provider's batch is never this large.
            log.warning(
                "webhook %s: refused %d bytes from %s ([http] max_body is %d)",
                name,
                request.content_length,
                peer,
                self.config.max_body,
            )
            return web.Response(status=413, text="too large")
        body = await request.read()  # raises 413 past client_max_size (chunked bodies)
        hook_request = WebhookRequest(
            method=request.method,
            headers=_lower_headers(request),
            body=body,
            remote=peer,
            received_at=time.time(),
            query={k: v for k, v in request.query.items()},
        )
        try:
            reply = await webhook.handle(hook_request)
        except WebhookRejected as exc:
            log.warning("webhook %s: rejected a request from %s: %s", name, peer, exc)
            status = exc.status if 400 <= exc.status < 600 else 403
            return web.Response(status=status, text="rejected")
        except Exception:
            log.exception("webhook %s: failed on a request from %s", name, peer)
            return web.Response(status=500, text="error")
        tracker = self.site.tracker
        if tracker is not None and reply.events:
            try:
                new = await tracker.ingest(webhook.source, reply.events)
            except TrackingError as exc:  # paused: the provider sends them again later
                log.warning(
                    "webhook %s: %d event(s) not recorded: %s", name, len(reply.events), exc
                )
                return web.Response(
                    status=503, text="try again later", headers={"Retry-After": "60"}
                )
            except Exception:
                # Not recorded: a 5xx makes the provider send the batch again.
                log.exception("webhook %s: cannot record %d event(s)", name, len(reply.events))
                return web.Response(status=500, text="error")
            log.debug("webhook %s: %d event(s), %d new", name, len(reply.events), new)
            await self._suppress_reported(name, reply.events)
        return web.Response(status=reply.status, text=reply.body)

    async def _suppress_reported(self, name: str, events: Sequence[ProviderEvent]) -> None:
        """Bounces and complaints a provider reports join the suppression list (never fails
        the webhook: the events are recorded already)."""
        tracker = self.site.tracker

        async def sender_of(queue_id: str) -> str | None:
            history = await tracker.message(queue_id) if tracker is not None else None
            return history.sender if history is not None else None

        try:
            added = await self.site.admin.note_reported(events, sender_of)
        except Exception:
            log.exception("webhook %s: cannot update the suppression list", name)
            return
        if not added:
            return
        log.info("webhook %s: %d address(es) added to the suppression list", name, len(added))
        try:
            await fanout.share_suppressions(self.site.config, added)
        except Exception as exc:  # kept here; the provider's next report may reach the others
            log.warning("webhook %s: cannot give the other workers the additions: %s", name, exc)


def _lower_headers(request: web.Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer, errors included: no framing, no sniffing, no referrer, nothing cached."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")
