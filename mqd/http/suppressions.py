"""The suppression list over HTTP: ``GET /api/v1/suppressions`` (the read token, as the rest of
the API), ``POST`` and ``DELETE`` (the operator token: they change what mqd sends), and the web
view's ``/suppressions`` page: each address and why it is on the list."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from aiohttp import web

from mqd.admin import fanout
from mqd.http.access import token_matches
from mqd.http.api import PREFIX, BadQuery, error, path_value
from mqd.http.bodies import SuppressionItem, SuppressionList
from mqd.http.html import e, page, table, when
from mqd.http.site import Site

__all__ = ["SuppressionRoutes"]


class SuppressionRoutes:
    def __init__(self, site: Site) -> None:
        self.site = site

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{PREFIX}/suppressions", self.list),
            web.post(f"{PREFIX}/suppressions", self.add),
            web.delete(f"{PREFIX}/suppressions/{{address}}", self.remove),
            web.get("/suppressions", self.view),
        ]

    async def _request(self, op: str, args: dict[str, Any]) -> Any:
        config = self.site.config
        if config.queue.workers > 1:
            return await fanout.request(config, op, args)
        return await self.site.admin.handle(op, args)

    async def _items(self, account: str | None) -> list[SuppressionItem]:
        # (once each with queue.workers: mqd.admin.fanout merges the workers' lists)
        rows = await self._request("suppress_list", {"account": account})
        return [SuppressionItem(**row) for row in rows]

    def _operator(self, request: web.Request) -> web.Response | None:
        """None when the request carries the operator token; else the 403 to answer."""
        token = self.site.config.http.operator_token
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        bearer = scheme.lower() == "bearer"
        if token is not None and bearer and token_matches(value.strip(), token.reveal()):
            return None
        why = (
            "changing the suppression list needs the operator token ([http] operator_token) "
            "as 'Authorization: Bearer <token>'"
        )
        if token is None:
            why += ": none is configured"
        return error(403, why)

    async def list(self, request: web.Request) -> web.Response:
        items = await self._items(request.query.get("account"))
        return web.json_response(asdict(SuppressionList(items)))

    async def add(self, request: web.Request) -> web.Response:
        refused = self._operator(request)
        if refused is not None:
            return refused
        try:
            body = json.loads(await request.read())
            addresses = body["addresses"]
            if not isinstance(addresses, list) or not all(
                isinstance(a, str) and "@" in a for a in addresses
            ):
                raise ValueError("'addresses' must be a list of addresses")
            for_seconds = body.get("for_seconds")
            if for_seconds is not None and not isinstance(for_seconds, int | float):
                raise ValueError("'for_seconds' must be a number of seconds")
        except (ValueError, KeyError, TypeError) as exc:
            return error(400, f'expected JSON {{"addresses": [...]}}: {exc}')
        result = await self._request(
            "suppress_add",
            {
                "addresses": addresses,
                "account": str(body.get("account") or ""),
                "reason": str(body.get("reason") or "added through the API"),
                "for_seconds": for_seconds,
            },
        )
        return web.json_response({"added": sorted(set(result["added"]))})

    async def remove(self, request: web.Request) -> web.Response:
        refused = self._operator(request)
        if refused is not None:
            return refused
        try:
            address = path_value(request, "address", "an address")
        except BadQuery as exc:
            return error(400, str(exc))
        result = await self._request(
            "suppress_remove", {"addresses": [address], "account": request.query.get("account")}
        )
        if not result["removed"]:
            return error(404, f"{address} is not on the suppression list")
        return web.json_response({"removed": len(result["removed"])})

    async def view(self, request: web.Request) -> web.Response:
        items = await self._items(request.query.get("account") or None)
        rows = [
            [
                e(item.address),
                e(item.account or "-"),
                e(item.kind),
                when(item.since),
                when(item.until) if item.until is not None else "for good",
                e(item.reason),
            ]
            for item in items
        ]
        body = (
            "<h1>Suppression list</h1>"
            "<p class=note>Recipients mqd does not send to again, per account: a bounce for the "
            "address (5.1.x), a provider's bounce or complaint report, or an operator's entry "
            "(<code>mqd suppress</code>).</p>"
            + table(
                ["address", "account", "why", "since", "until", "reason"],
                rows,
                empty="No address is suppressed.",
            )
        )
        return page("Suppression list", body, here="/suppressions")
