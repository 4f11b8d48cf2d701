"""The PostgreSQL store's schema: its migrations, applying them, and knowing where a database is.

``mqd db upgrade`` applies what is missing under a transaction-level advisory lock (two nodes
upgrading at once take turns; the second finds nothing to do); ``mqd db check`` and every node's
start compare the database's version with ``SCHEMA_VERSION``: a node refuses a schema it does
not know, older (run the upgrade) or newer (run the newer mqd).

The tables (all in the connection's ``search_path`` schema):

* ``mqd_entry``: the hot table, one small row per queued entry (its state as JSON, the columns
  the schedule needs, the lease: owner node, expiry, fencing token, the dispatching mark).
  Entries leave it when they finish, so autovacuum is set to keep up with the churn.
* ``mqd_body``: the message bytes, apart (bodies are large and written once).
* ``mqd_delivered``: recipients delivered by a holder that had lost its lease meanwhile: the
  next holder never sends to them again.
* ``mqd_accepted``: every id accepted lately, so that accepting one again after a crash (between
  the commit and the removal of the claimed files) sends nothing twice, even when it was
  delivered and removed meanwhile.
* ``mqd_handover``: the hand-over keys (``mqd.queue.postgresql.keys``): (scope, key) -> the
  entry id it was accepted as, written in the accept's transaction, until it expires.
* ``mqd_failed``: the failed folder; ``mqd_state``: each node's small blobs; ``mqd_meta``: the
  schema version.
* ``mqd_track_message``, ``mqd_track_recipient``, ``mqd_track_event``, ``mqd_track_cursor``:
  the event store (``mqd.tracking.postgresql``), when tracking is on.
* ``mqd_quota_count`` (sends per key and minute, for hour and day limits), ``mqd_quota_recent``
  (per key and second, for minute limits), ``mqd_node`` (each node's heartbeat) and
  ``mqd_suppression`` (the fleet's suppression list): ``mqd.queue.postgresql.fleet``.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg.errors import UndefinedTable

from mqd.errors import QueueSchemaError
from mqd.queue.postgresql.connect import Conn

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SchemaError",
    "SchemaStatus",
    "schema_status",
    "script",
    "upgrade",
]


#: The database's mqd schema is missing, older or newer than this mqd knows.
SchemaError = QueueSchemaError


#: One migration per version, applied in order (never edited once released: add one).
MIGRATIONS: tuple[str, ...] = (
    """
CREATE TABLE mqd_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE SEQUENCE mqd_token;
CREATE TABLE mqd_entry (
    id text PRIMARY KEY,
    created_at double precision NOT NULL,
    next_attempt_at double precision NOT NULL,
    send_at double precision,
    held boolean NOT NULL DEFAULT false,
    attempts integer NOT NULL DEFAULT 0,
    size bigint NOT NULL DEFAULT 0,
    relays text[] NOT NULL,
    state jsonb NOT NULL,
    owner text,
    token bigint NOT NULL DEFAULT 0,
    lease_expires double precision,
    dispatching boolean NOT NULL DEFAULT false,
    retry_asked boolean NOT NULL DEFAULT false,
    redispatches integer NOT NULL DEFAULT 0
) WITH (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 200,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
CREATE INDEX mqd_entry_due ON mqd_entry (next_attempt_at) WHERE NOT held;
CREATE INDEX mqd_entry_owner ON mqd_entry (owner) WHERE owner IS NOT NULL;
CREATE TABLE mqd_body (
    id text PRIMARY KEY,
    body bytea NOT NULL
);
CREATE TABLE mqd_delivered (
    entry_id text NOT NULL REFERENCES mqd_entry (id) ON DELETE CASCADE,
    address text NOT NULL,
    recipient jsonb NOT NULL,
    PRIMARY KEY (entry_id, address)
);
CREATE TABLE mqd_accepted (
    id text PRIMARY KEY,
    accepted_at double precision NOT NULL
);
CREATE INDEX mqd_accepted_at ON mqd_accepted (accepted_at);
CREATE TABLE mqd_failed (
    id text PRIMARY KEY,
    failed_at double precision NOT NULL,
    record jsonb NOT NULL,
    body bytea
);
CREATE INDEX mqd_failed_at ON mqd_failed (failed_at);
CREATE TABLE mqd_state (
    node text NOT NULL,
    name text NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (node, name)
);
""",
    # 2: the event store (mqd.tracking.postgresql): every node's history in one place. txid is
    # the writing transaction's id: readers of the feed go by (txid, seq) below the oldest
    # transaction still running, so that an event committed late is never skipped.
    """
CREATE TABLE mqd_track_message (
    id text PRIMARY KEY,
    message_id text,
    sender text NOT NULL DEFAULT '',
    status text NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    subject text,
    not_a_message text,
    account text
);
CREATE INDEX mqd_track_message_account ON mqd_track_message (account, created_at);
CREATE INDEX mqd_track_message_message_id ON mqd_track_message (message_id);
CREATE INDEX mqd_track_message_sender ON mqd_track_message (lower(sender));
CREATE INDEX mqd_track_message_created ON mqd_track_message (created_at DESC, id DESC);
CREATE INDEX mqd_track_message_updated ON mqd_track_message (updated_at);
CREATE TABLE mqd_track_recipient (
    message text NOT NULL,
    address text NOT NULL,
    status text NOT NULL,
    rank integer NOT NULL,
    updated_at double precision NOT NULL,
    relay text,
    provider_id text,
    reply text,
    PRIMARY KEY (message, address)
);
CREATE INDEX mqd_track_recipient_address ON mqd_track_recipient (address);
CREATE INDEX mqd_track_recipient_provider_id ON mqd_track_recipient (provider_id);
CREATE TABLE mqd_track_event (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    message text NOT NULL,
    recipient text,
    status text NOT NULL,
    at double precision NOT NULL,
    source text NOT NULL,
    relay text,
    provider_id text,
    reply text,
    detail text NOT NULL DEFAULT '{}',
    event_key text UNIQUE
);
CREATE INDEX mqd_track_event_message ON mqd_track_event (message, seq);
CREATE INDEX mqd_track_event_at ON mqd_track_event (at);
CREATE INDEX mqd_track_event_feed ON mqd_track_event (txid, seq);
CREATE TABLE mqd_track_cursor (
    name text PRIMARY KEY,
    txid xid8 NOT NULL,
    seq bigint NOT NULL
);
""",
    # 3: what the fleet shares (mqd.queue.postgresql.fleet): send counts, heartbeats, the
    # suppression list; the nodes' small state carried over.
    """
CREATE TABLE mqd_quota_count (
    key text NOT NULL,
    minute bigint NOT NULL,
    n integer NOT NULL,
    PRIMARY KEY (key, minute)
);
CREATE TABLE mqd_quota_recent (
    key text NOT NULL,
    second bigint NOT NULL,
    n integer NOT NULL,
    PRIMARY KEY (key, second)
);
CREATE TABLE mqd_node (
    node text PRIMARY KEY,
    seen_at double precision NOT NULL
);
CREATE TABLE mqd_suppression (
    account text NOT NULL,
    address text NOT NULL,
    kind text NOT NULL,
    reason text NOT NULL,
    since double precision NOT NULL,
    until double precision,
    written xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (account, address)
);
CREATE INDEX mqd_suppression_written ON mqd_suppression (written);
DO $$
DECLARE
    r record;
    prefix text;
BEGIN
    -- The nodes' own counts and lists (small state) become the fleet's, summed and merged;
    -- a blob that cannot be read is left out with a notice.
    FOR r IN SELECT name, convert_from(data, 'UTF8') AS data FROM mqd_state
        WHERE name IN ('quota', 'accounts', 'suppressions') LOOP
        BEGIN
            IF r.name = 'suppressions' THEN
                INSERT INTO mqd_suppression AS s (account, address, kind, reason, since, until)
                SELECT i ->> 'account', lower(i ->> 'address'), i ->> 'kind', i ->> 'reason',
                    (i ->> 'since')::float8, (i ->> 'until')::float8
                FROM jsonb_array_elements(r.data::jsonb -> 'items') i
                ON CONFLICT (account, address) DO UPDATE SET kind = excluded.kind,
                    reason = excluded.reason, since = excluded.since, until = excluded.until
                WHERE s.until IS NOT NULL AND (excluded.until IS NULL OR excluded.until > s.until);
            ELSE
                prefix := CASE r.name WHEN 'quota' THEN 'relay:' ELSE 'account:' END;
                INSERT INTO mqd_quota_count (key, minute, n)
                SELECT prefix || k.key, m.key::bigint, m.value::int
                FROM jsonb_each(r.data::jsonb -> CASE r.name WHEN 'quota' THEN 'relays'
                    ELSE 'accounts' END) k, jsonb_each_text(k.value -> 'minutes') m
                ON CONFLICT (key, minute) DO UPDATE SET n = mqd_quota_count.n + excluded.n;
                INSERT INTO mqd_quota_recent (key, second, n)
                SELECT prefix || k.key, floor(t::float8)::bigint, count(*)
                FROM jsonb_each(r.data::jsonb -> CASE r.name WHEN 'quota' THEN 'relays'
                    ELSE 'accounts' END) k,
                    jsonb_array_elements_text(coalesce(k.value -> 'recent', '[]')) t
                GROUP BY 1, 2
                ON CONFLICT (key, second) DO UPDATE SET n = mqd_quota_recent.n + excluded.n;
            END IF;
        EXCEPTION WHEN others THEN
            RAISE NOTICE 'mqd: a node''s saved % were not carried over: %', r.name, SQLERRM;
        END;
    END LOOP;
END
$$;
""",
    # 4: hand-over keys (mqd.queue.postgresql.keys): an Idempotency-Key or an AMQP message_id
    # queued once for the fleet, whichever node it reaches; the submit API's keys the nodes kept
    # in their small state (submit-keys.<scope>.<shard>: {key: [expires, fingerprint, id,
    # message_id]}) carried over, then dropped.
    """
CREATE TABLE mqd_handover (
    scope text NOT NULL,
    key text NOT NULL,
    id text NOT NULL,
    note text NOT NULL DEFAULT '',
    expires double precision NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX mqd_handover_expires ON mqd_handover (expires);
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT node, name, convert_from(data, 'UTF8') AS data FROM mqd_state
        WHERE name LIKE 'submit-keys.%' LOOP
        BEGIN
            INSERT INTO mqd_handover (scope, key, id, note, expires)
            SELECT 'submit.' || split_part(r.name, '.', 2), k.key, k.value ->> 2,
                (k.value ->> 1) || ' ' || (k.value ->> 3), (k.value ->> 0)::float8
            FROM jsonb_each(r.data::jsonb) k
            ON CONFLICT (scope, key) DO NOTHING;
        EXCEPTION WHEN others THEN
            RAISE NOTICE 'mqd: the idempotency keys % of node % were not carried over: %',
                r.name, r.node, SQLERRM;
        END;
    END LOOP;
    DELETE FROM mqd_state WHERE name LIKE 'submit-keys.%';
END
$$;
""",
    # 5: no index on a lease's owner, so that taking a lease and marking it dispatching are HOT
    # updates (no indexed column changes: the new row version stays on its page, no index
    # entry is added). A node's own leases are found by their ids (the primary key); only a
    # node's start (giving back what it held) reads the table through. The same for tracking:
    # a message's row changes its status and last update at each event, and a recipient's its
    # status; without an index on the last update and with room left on each page, those are
    # HOT updates too (the hourly prune of old messages reads the table through).
    """
DROP INDEX IF EXISTS mqd_entry_owner;
DROP INDEX IF EXISTS mqd_track_message_updated;
ALTER TABLE mqd_track_message SET (fillfactor = 70);
ALTER TABLE mqd_track_recipient SET (fillfactor = 70);
""",
)

SCHEMA_VERSION = len(MIGRATIONS)

_SET_VERSION = (
    "INSERT INTO mqd_meta (key, value) VALUES ('schema_version', '{v}') "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value;"
)
#: The advisory lock ``upgrade`` holds (per schema: tests keep a schema each).
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('mqd-schema:' || current_schema(), 0))"


def script(since: int = 0) -> str:
    """The SQL that brings a database at version ``since`` to ``SCHEMA_VERSION`` (what
    ``mqd db upgrade --sql`` prints), as one transaction."""
    parts = ["BEGIN;", _LOCK + ";"]
    for number, migration in enumerate(MIGRATIONS[since:], start=since + 1):
        parts.append(f"-- mqd schema version {number}")
        parts.append(migration.strip())
        parts.append(_SET_VERSION.format(v=number))
    parts.append("COMMIT;")
    return "\n".join(parts) + "\n"


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """Where a database is: ``version`` 0 when it has no mqd schema."""

    version: int

    @property
    def current(self) -> bool:
        return self.version == SCHEMA_VERSION

    def problem(self) -> str | None:
        """What is wrong with it, for a person (None: nothing)."""
        if self.version == 0:
            return "the database has no mqd schema yet: run 'mqd db upgrade'"
        if self.version < SCHEMA_VERSION:
            return (
                f"the database's mqd schema is version {self.version}, this mqd needs "
                f"{SCHEMA_VERSION}: run 'mqd db upgrade'"
            )
        if self.version > SCHEMA_VERSION:
            return (
                f"the database's mqd schema is version {self.version}, newer than this mqd "
                f"knows ({SCHEMA_VERSION}): run the mqd that upgraded it"
            )
        return None

    def require(self) -> None:
        """Raise SchemaError unless the schema is the one this mqd knows."""
        problem = self.problem()
        if problem is not None:
            raise SchemaError(problem)


async def schema_status(conn: Conn) -> SchemaStatus:
    """The schema version of the database ``conn`` is on (its own transaction)."""
    try:
        async with conn.transaction():
            cursor = await conn.execute("SELECT value FROM mqd_meta WHERE key = 'schema_version'")
            row = await cursor.fetchone()
    except UndefinedTable:
        return SchemaStatus(0)
    return SchemaStatus(int(str(row[0])) if row is not None else 0)


async def upgrade(conn: Conn) -> tuple[int, int]:
    """Apply the missing migrations in one transaction under the schema lock; returns the
    versions (before, after). SchemaError when the database is newer than this mqd."""
    async with conn.transaction():
        await conn.execute(_LOCK)
        exists = await conn.execute("SELECT to_regclass('mqd_meta') IS NOT NULL")
        row = await exists.fetchone()
        before = 0
        if row is not None and row[0]:
            found = await conn.execute("SELECT value FROM mqd_meta WHERE key = 'schema_version'")
            version = await found.fetchone()
            before = int(str(version[0])) if version is not None else 0
        if before > SCHEMA_VERSION:
            SchemaStatus(before).require()
        for number, migration in enumerate(MIGRATIONS[before:], start=before + 1):
            await conn.execute(migration.encode())
            await conn.execute(_SET_VERSION.format(v=number).encode())
    return before, SCHEMA_VERSION
