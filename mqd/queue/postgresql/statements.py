"""The statements of the PostgreSQL store, in one place to read them together.

Every write of a lease holder is fenced: ``WHERE id = ... AND token = ... AND owner = ...``; a
holder whose lease was revoked or taken over matches no row.
"""

from __future__ import annotations

#: The entries due, locked in ``due``, then updated by their ids: a lookup in the primary key
#: whatever the planner thinks of the table (joined to ``due``, it read the whole table at each
#: lease on a queue without statistics yet: a new one, or one filled faster than autovacuum
#: analyzes it).
LEASE = """
WITH due AS (
    SELECT id, owner IS NOT NULL AND dispatching AS taken_over
    FROM mqd_entry
    WHERE NOT held AND next_attempt_at <= %(now)s AND (owner IS NULL OR lease_expires < %(now)s)
    ORDER BY next_attempt_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE mqd_entry e
SET owner = %(node)s, token = nextval('mqd_token'), lease_expires = %(expires)s,
    dispatching = false,
    redispatches = e.redispatches + (e.owner IS NOT NULL AND e.dispatching)::int
WHERE e.id = ANY(ARRAY(SELECT id FROM due))
RETURNING e.id, e.state::text, e.held, e.next_attempt_at, e.token,
    (SELECT due.taken_over FROM due WHERE due.id = e.id),
    (SELECT json_agg(d.recipient)::text FROM mqd_delivered d WHERE d.entry_id = e.id),
    (SELECT b.body FROM mqd_body b WHERE b.id = e.id)
"""
LEASE_IDS = """
UPDATE mqd_entry e
SET owner = %(node)s, token = nextval('mqd_token'), lease_expires = %(expires)s,
    dispatching = false
WHERE e.id = ANY(%(ids)s)
RETURNING e.id, e.state::text, e.held, e.next_attempt_at, e.token, false,
    (SELECT json_agg(d.recipient)::text FROM mqd_delivered d WHERE d.entry_id = e.id)
"""
RECOVER = """
WITH mine AS (SELECT id, dispatching FROM mqd_entry WHERE owner = %s FOR UPDATE)
UPDATE mqd_entry e
SET owner = NULL, lease_expires = NULL, dispatching = false,
    redispatches = e.redispatches + mine.dispatching::int
FROM mine
WHERE e.id = mine.id
RETURNING e.id, mine.dispatching
"""
#: ``give_back``: this node's leases whose outcome it could not write, due again at once (one
#: marked dispatching may have gone out: counted as a redispatch, as a takeover would).
GIVE_BACK = """
WITH mine AS (
    SELECT e.id, e.dispatching FROM mqd_entry e
    JOIN unnest(%(ids)s::text[], %(tokens)s::int8[]) AS l(id, token)
        ON e.id = l.id AND e.token = l.token
    WHERE e.owner = %(node)s AND e.id = ANY(%(ids)s::text[]) FOR UPDATE OF e
)
UPDATE mqd_entry e
SET owner = NULL, lease_expires = NULL, dispatching = false,
    redispatches = e.redispatches + mine.dispatching::int
FROM mine
WHERE e.id = mine.id
RETURNING e.id, mine.dispatching
"""
SAVE = """
UPDATE mqd_entry
SET state = %(state)s::jsonb, attempts = %(attempts)s, size = %(size)s,
    next_attempt_at = CASE WHEN retry_asked THEN least(%(due)s, %(now)s) ELSE %(due)s END,
    retry_asked = false, owner = NULL, lease_expires = NULL, dispatching = false
WHERE id = %(id)s AND token = %(token)s AND owner = %(node)s
RETURNING id
"""
#: ``save`` of concurrent deliveries without a bounce, in one statement (``groupcommit``); found
#: by the primary key, as ``MARK_AND_COMPLETE``.
SAVE_GROUP = """
UPDATE mqd_entry e
SET state = l.state, attempts = l.attempts, size = l.size,
    next_attempt_at = CASE WHEN e.retry_asked THEN least(l.due, %(now)s) ELSE l.due END,
    retry_asked = false, owner = NULL, lease_expires = NULL, dispatching = false
FROM unnest(
    %(ids)s::text[], %(tokens)s::int8[], %(states)b::jsonb[], %(attempts)b::int4[],
    %(sizes)b::int8[], %(dues)b::float8[]
) AS l(id, token, state, attempts, size, due)
WHERE e.id = l.id AND e.token = l.token AND e.owner = %(node)s AND e.id = ANY(%(ids)s::text[])
RETURNING e.id
"""
CHECKPOINT = """
UPDATE mqd_entry SET state = %(state)s::jsonb, attempts = %(attempts)s, size = %(size)s
WHERE id = %(id)s AND token = %(token)s AND owner = %(node)s RETURNING id
"""
#: A release after the dispatching mark (the outcome could not be written) may have gone out:
#: counted as a redispatch.
RELEASE = """
WITH mine AS (
    SELECT id, dispatching FROM mqd_entry
    WHERE id = %(id)s AND token = %(token)s AND owner = %(node)s FOR UPDATE
)
UPDATE mqd_entry e
SET next_attempt_at = CASE WHEN retry_asked THEN least(next_attempt_at, %(now)s)
        ELSE coalesce(%(due)s, next_attempt_at) END,
    retry_asked = false, owner = NULL, lease_expires = NULL, dispatching = false,
    redispatches = e.redispatches + mine.dispatching::int
FROM mine
WHERE e.id = mine.id
RETURNING mine.dispatching
"""

#: The dispatching marks and the completions of concurrent deliveries, in one statement
#: (``groupcommit``): a mark renews its lease, a completion removes the entry and its body. The
#: arrays go as text built by ``arrays`` (a third of the client's time of psycopg's binary
#: adaptation of the lists, half of their text form). The ids of one
#: statement differ (a delivery completes once its mark is written): each row is written once.
#: ``e.id = ANY(ids)`` finds the rows by the primary key, whatever the planner thinks of the
#: table (there is no index on the owner: a lease is a HOT update).
#: An entry held since it was leased (a lease kept ahead waits a while) is not marked: its
#: caller is told the lease is lost, so it is not sent, and gives the lease back (``RELEASE``).
MARK_AND_COMPLETE = """
WITH l AS (
    SELECT * FROM unnest(%(ids)s::text[], %(tokens)s::int8[], %(completes)s::bool[])
        AS l(id, token, completes)
),
marked AS (
    UPDATE mqd_entry e
    SET dispatching = true, lease_expires = greatest(e.lease_expires, %(expires)s)
    FROM l
    WHERE NOT l.completes AND e.id = l.id AND e.token = l.token AND e.owner = %(node)s
        AND NOT e.held AND e.id = ANY(%(ids)s::text[])
    RETURNING e.id
),
gone AS (
    DELETE FROM mqd_entry e USING l
    WHERE l.completes AND e.id = l.id AND e.token = l.token AND e.owner = %(node)s
        AND e.id = ANY(%(ids)s::text[])
    RETURNING e.id
),
body AS (DELETE FROM mqd_body b USING gone WHERE b.id = gone.id)
SELECT id FROM marked UNION ALL SELECT id FROM gone
"""
#: ``fail``: the entry leaves, its body goes into the failed folder with its record.
FAIL = """
WITH gone AS (
    DELETE FROM mqd_entry WHERE id = %(id)s AND token = %(token)s AND owner = %(node)s
    RETURNING id
),
body AS (DELETE FROM mqd_body b USING gone WHERE b.id = gone.id RETURNING b.body),
kept AS (
    INSERT INTO mqd_failed (id, failed_at, record, body)
    SELECT gone.id, %(now)s, %(record)s::jsonb, (SELECT body FROM body) FROM gone
    ON CONFLICT (id) DO UPDATE
    SET failed_at = excluded.failed_at, record = excluded.record, body = excluded.body
)
SELECT id FROM gone
"""
#: The recipients a holder delivered after it lost its lease (kept while the entry is queued).
REMEMBER = """
INSERT INTO mqd_delivered (entry_id, address, recipient)
SELECT %(id)s, %(address)s, %(r)s::jsonb
WHERE EXISTS (SELECT 1 FROM mqd_entry WHERE id = %(id)s)
ON CONFLICT DO NOTHING
"""
RENEW = """
UPDATE mqd_entry SET lease_expires = %(expires)s
FROM unnest(%(ids)s::text[], %(tokens)s::int8[]) AS l(id, token)
WHERE mqd_entry.id = l.id AND mqd_entry.token = l.token AND owner = %(node)s
    AND mqd_entry.id = ANY(%(ids)s::text[])
"""
#: Other nodes' leases count from their expiry: a dead node's entries are due then. Only the
#: entries due no later than the first one free can be earlier (an expiry is never before its
#: entry's due time): the due index read up to there, not the whole table at each call.
NEXT_DUE = """
SELECT min(CASE WHEN owner IS NULL THEN next_attempt_at
    ELSE greatest(next_attempt_at, lease_expires) END)
FROM mqd_entry
WHERE NOT held AND (owner IS NULL OR owner <> %s) AND next_attempt_at <= coalesce(
    (SELECT next_attempt_at FROM mqd_entry WHERE NOT held AND owner IS NULL
        ORDER BY next_attempt_at LIMIT 1),
    'infinity')
"""
NOTIFY = "SELECT pg_notify(%s, '')"
LOAD_STATE = "SELECT data FROM mqd_state WHERE node = %s AND name = %s"
SAVE_STATE = """
INSERT INTO mqd_state (node, name, data) VALUES (%s, %s, %s)
ON CONFLICT (node, name) DO UPDATE SET data = excluded.data
"""
PRUNE_ACCEPTED = "DELETE FROM mqd_accepted WHERE accepted_at < %s"
