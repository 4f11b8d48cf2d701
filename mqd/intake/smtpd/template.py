"""A listener's connections set up as copies of one made in full.

aiosmtpd's ``SMTP.__init__`` finds its commands, hooks and AUTH mechanisms by reflection over
the connection and its handler, checks its settings and logs them, at every connection: with
``smtp-source``'s one connection a message, a twentieth of the daemon's CPU. Everything it sets
up depends on the listener's settings only, so it is done once for them (a model connection,
never connected) and each connection copies the model's attributes: the methods bound to the
model are bound to the copy (in dictionaries and tuples too), containers are copied, and
asyncio's stream state is made anew (its reader a ``data.Reader``). ``tests/test_smtpd.py``
holds a copy equal to a connection aiosmtpd set up.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

from mqd.intake.smtpd.data import Reader
from mqd.intake.smtpd.session import Connection
from mqd.intake.smtpd.settings import SMTPSettings

__all__ = ["Template"]


class Template:
    """The set-up of the connections of one listener's ``settings``."""

    def __init__(self, settings: SMTPSettings, model: Connection) -> None:
        self.settings = settings
        self._model = model
        state = vars(model)  # as aiosmtpd's __init__ left them: not connected
        #: What refers to the model (bound methods), or may change: made for each copy.
        self._own = {
            name: value
            for name, value in state.items()
            if isinstance(value, (dict, list, set, tuple, types.MethodType)) or value is model
        }
        #: The rest is shared (settings, the handler, the loop ...).
        self._shared = {name: value for name, value in state.items() if name not in self._own}

    def connection(self) -> Connection:
        """A new connection, as ``model`` was when made."""
        model = self._model
        connection = Connection.__new__(Connection)
        connection.__dict__.update(self._shared)
        for name, value in self._own.items():
            setattr(connection, name, _rebound(value, model, connection))
        loop = connection.loop
        asyncio.StreamReaderProtocol.__init__(
            connection,
            Reader(limit=connection.line_length_limit, loop=loop),
            client_connected_cb=connection._cb_client_connected,
            loop=loop,
        )
        return connection


def _rebound(value: Any, model: Connection, connection: Connection) -> Any:
    """``value`` with what refers to ``model`` made to refer to ``connection``."""
    if isinstance(value, types.MethodType):
        return types.MethodType(value.__func__, connection) if value.__self__ is model else value
    if isinstance(value, dict):
        if not any(isinstance(item, (types.MethodType, tuple)) for item in value.values()):
            return dict(value)
        return {key: _rebound(item, model, connection) for key, item in value.items()}
    if isinstance(value, list):
        return [_rebound(item, model, connection) for item in value]
    if isinstance(value, set):
        return set(value)
    if isinstance(value, tuple) and any(isinstance(item, types.MethodType) for item in value):
        items = [_rebound(item, model, connection) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if value is model:
        return connection
    return value
