"""Tracking: every message's timeline in an event store, fed by mqd's own events and by the
providers' webhooks, queried by ``mqd history``, the JSON API and the web view."""
