"""The daemon's HTTP server (``[http]``): provider webhooks, the read-only JSON API, the web view.

Imported only when ``[http] enabled = true`` (``mqd.daemon.root`` imports ``.server`` lazily), so a
daemon without it never loads aiohttp's server side.

- ``server``: ``HttpServer``, the application, its access control and the webhook routing
- ``access``: who may read the API and the web view (loopback, bearer token, login cookie)
- ``api``: ``/api/v1/...``; ``bodies``: its own answer bodies (errors, lists); ``openapi``: its
  OpenAPI 3.1 description, with schemas generated from the answers' types by ``schema``
- ``view``: the server-rendered HTML pages
"""
