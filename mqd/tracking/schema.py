"""The event store's SQL schema, its version, and the steps from an older version to this one.

The SQL is portable (no SQLite-only functions, ``ON CONFLICT`` as PostgreSQL spells it) so that a
PostgreSQL store can run the same statements. The version is kept in the store itself
(``meta``, name ``schema``); ``upgrade`` says what to run on a store found at a given version.
"""

from __future__ import annotations

from pathlib import Path

from mqd.errors import TrackingError

__all__ = ["META", "MIGRATIONS", "SCHEMA_VERSION", "TABLES", "VERSION_QUERY", "upgrade"]

SCHEMA_VERSION = 3

#: Created first, whatever the version: where the version is kept.
META = """CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
)"""
VERSION_QUERY = "SELECT value FROM meta WHERE name = 'schema'"
_SET_VERSION = (
    "INSERT INTO meta (name, value) VALUES ('schema', '{version}') "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)

#: The tables and indexes of ``SCHEMA_VERSION``, for a new store.
TABLES = (
    """CREATE TABLE IF NOT EXISTS messages (
        id TEXT PRIMARY KEY,
        message_id TEXT,
        sender TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        subject TEXT,
        not_a_message TEXT,
        account TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS messages_message_id ON messages (message_id)",
    "CREATE INDEX IF NOT EXISTS messages_account ON messages (account, created_at)",
    "CREATE INDEX IF NOT EXISTS messages_sender ON messages (sender)",
    "CREATE INDEX IF NOT EXISTS messages_updated_at ON messages (updated_at)",
    """CREATE TABLE IF NOT EXISTS recipients (
        message TEXT NOT NULL,
        address TEXT NOT NULL,
        status TEXT NOT NULL,
        rank INTEGER NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        relay TEXT,
        provider_id TEXT,
        reply TEXT,
        PRIMARY KEY (message, address)
    )""",
    "CREATE INDEX IF NOT EXISTS recipients_address ON recipients (address)",
    "CREATE INDEX IF NOT EXISTS recipients_provider_id ON recipients (provider_id)",
    # seq: INTEGER PRIMARY KEY is SQLite's rowid; PostgreSQL spells it BIGSERIAL.
    """CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY,
        message TEXT NOT NULL,
        recipient TEXT,
        status TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        source TEXT NOT NULL,
        relay TEXT,
        provider_id TEXT,
        reply TEXT,
        detail TEXT NOT NULL DEFAULT '{}',
        event_key TEXT UNIQUE
    )""",
    "CREATE INDEX IF NOT EXISTS events_message ON events (message, seq)",
    "CREATE INDEX IF NOT EXISTS events_at ON events (at)",
    """CREATE TABLE IF NOT EXISTS cursors (
        name TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
    )""",
)

#: The statements that take a store from version ``n`` to ``n + 1``, by ``n``. A change to
#: ``TABLES`` raises ``SCHEMA_VERSION`` and adds its step here, so that old stores follow.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 2: a message's Subject, and why a rejected file is not a message.
    1: (
        "ALTER TABLE messages ADD COLUMN subject TEXT",
        "ALTER TABLE messages ADD COLUMN not_a_message TEXT",
    ),
    # 3: the [[account]] a message's sender belongs to (the history per user of a platform).
    2: (
        "ALTER TABLE messages ADD COLUMN account TEXT",
        "CREATE INDEX IF NOT EXISTS messages_account ON messages (account, created_at)",
    ),
}


def upgrade(found: str | None, *, path: Path | None = None) -> list[str]:
    """The statements to run, in one transaction, on a store whose ``meta`` says ``found`` (None:
    a new store) to bring it to ``SCHEMA_VERSION``; none when it is there already.

    Raises ``TrackingError`` for a store written by a newer mqd (or a version that is not a
    number): it is left as it is, for that mqd.
    """
    if found is None:
        return [*TABLES, _SET_VERSION.format(version=SCHEMA_VERSION)]
    try:
        version = int(found)
    except ValueError:
        version = -1
    if not 1 <= version <= SCHEMA_VERSION:
        raise TrackingError(
            f"the event store {path or ''} has schema version {found!r}, which this mqd "
            f"(schema {SCHEMA_VERSION}) does not know: it was written by a newer mqd; run that "
            "one, or point [tracking] path elsewhere",
            path=path,
        )
    steps: list[str] = []
    for step in range(version, SCHEMA_VERSION):
        steps += MIGRATIONS[step]
    if steps:
        steps.append(_SET_VERSION.format(version=SCHEMA_VERSION))
    return steps
