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
from collections.abc import Callable
from typing import Any

from mqd.intake.smtpd.data import Reader
from mqd.intake.smtpd.session import Connection
from mqd.intake.smtpd.settings import SMTPSettings

__all__ = ["Template"]


class Template:
    """The set-up of the connections of one listener's ``settings``."""

    def __init__(self, settings: SMTPSettings, model: Connection) -> None:
        self.settings = settings
        #: aiosmtpd's __init__'s work, as it left the model (not connected): shared by the
        #: copies (settings, the handler, the loop ...), or made for each (see _maker).
        self._shared: dict[str, Any] = {}
        self._made: list[tuple[str, _Make]] = []
        for name, value in vars(model).items():
            make = _maker(value, model)
            if make is None:
                self._shared[name] = value
            else:
                self._made.append((name, make))

    def connection(self) -> Connection:
        """A new connection, as the model was when made."""
        connection = Connection.__new__(Connection)
        attributes = connection.__dict__
        attributes.update(self._shared)
        for name, make in self._made:
            attributes[name] = make(connection)
        loop = connection.loop
        asyncio.StreamReaderProtocol.__init__(
            connection,
            Reader(limit=connection.line_length_limit, loop=loop),
            client_connected_cb=connection._cb_client_connected,
            loop=loop,
        )
        return connection


#: Makes a copy's own value of an attribute.
_Make = Callable[[Connection], Any]


def _maker(value: Any, model: Connection) -> _Make | None:
    """How a copy gets its own ``value``: what refers to ``model`` (a method bound to it, in
    dictionaries and tuples too) refers to the copy, containers are new; None: shared."""
    if value is model:
        return lambda connection: connection
    if isinstance(value, types.MethodType):
        if value.__self__ is not model:
            return None
        function = value.__func__
        return lambda connection: types.MethodType(function, connection)
    if isinstance(value, dict):
        items = [(key, item, _maker(item, model)) for key, item in value.items()]
        if all(make is None for _, _, make in items):
            return lambda connection: dict(value)
        return lambda connection: {
            key: item if make is None else make(connection) for key, item, make in items
        }
    if isinstance(value, (list, set)):
        makers = [(item, _maker(item, model)) for item in value]
        kind = type(value)
        return lambda connection: kind(
            item if make is None else make(connection) for item, make in makers
        )
    if isinstance(value, tuple):
        makers = [(item, _maker(item, model)) for item in value]
        if all(make is None for _, make in makers):
            return None
        named: Any = type(value)
        rebuild = named._make if hasattr(value, "_fields") else tuple  # (a NamedTuple)
        return lambda connection: rebuild(
            item if make is None else make(connection) for item, make in makers
        )
    return None
