"""``mqd db``: the queue database's schema (``queue.store = "postgresql"``).

``mqd db upgrade`` applies what is missing, under an advisory lock (nodes upgrading at once
take turns); ``--sql`` prints the SQL instead, for a database administrator to apply. ``mqd db
check`` says where the database is and exits non-zero when its schema is behind or ahead of
this mqd (a node refuses to start on it then).
"""

from __future__ import annotations

import asyncio

import click

from mqd.cli.shared import State, pass_state
from mqd.config.schema import Config
from mqd.errors import ConfigError

__all__ = ["db"]


@click.group()
def db() -> None:
    """The queue database's schema (queue.store = "postgresql")."""


def _database(config: Config) -> tuple[str, str | None]:
    database = config.queue.database
    if config.queue.store != "postgresql" or database is None:
        raise ConfigError(
            f'queue.store is "{config.queue.store}": there is no queue database (set '
            'queue.store = "postgresql" and queue.dsn)'
        )
    return database.dsn, database.password.reveal() if database.password else None


@db.command()
@click.option("--sql", "as_sql", is_flag=True, help="Print the SQL instead of applying it.")
@click.option(
    "--from",
    "since",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="With --sql: the version the database is at (0: no mqd schema yet).",
)
@pass_state
def upgrade(state: State, as_sql: bool, since: int) -> None:
    """Bring the queue database's schema to this mqd's version.

    Safe to run on every node at once, and again: what is applied already is skipped.
    """
    from mqd.queue.postgresql.schema import SCHEMA_VERSION, script

    if as_sql:
        if since > SCHEMA_VERSION:
            raise click.UsageError(
                f"--from {since}: this mqd knows versions up to {SCHEMA_VERSION}"
            )
        click.echo(script(since), nl=False)
        return
    dsn, password = _database(state.load())

    async def apply() -> tuple[int, int, str]:
        from mqd.queue.postgresql.connect import Database, connect, translated
        from mqd.queue.postgresql.schema import upgrade as upgrade_schema

        database = Database(dsn, password)
        conn = await connect(database)
        try:
            async with translated(database, "upgrading the schema"):
                before, after = await upgrade_schema(conn)
        finally:
            await conn.close()
        return before, after, database.shown

    before, after, shown = asyncio.run(apply())
    if before == after:
        click.echo(f"{shown}: the schema is at version {after} already; nothing to do")
    else:
        click.echo(f"{shown}: the schema went from version {before} to {after}")


@db.command()
@pass_state
def check(state: State) -> None:
    """Say whether the queue database's schema is the one this mqd knows.

    Exits 0 when it is, 78 when it is missing, behind (run 'mqd db upgrade') or ahead (run the
    newer mqd), 75 when the database cannot be reached.
    """
    dsn, password = _database(state.load())

    async def look() -> tuple[int, str | None, str]:
        from mqd.queue.postgresql.connect import Database, connect, translated
        from mqd.queue.postgresql.schema import schema_status

        database = Database(dsn, password)
        conn = await connect(database)
        try:
            async with translated(database, "reading the schema version"):
                status = await schema_status(conn)
        finally:
            await conn.close()
        return status.version, status.problem(), database.shown

    from mqd.errors import QueueSchemaError

    version, problem, shown = asyncio.run(look())
    if problem is not None:
        raise QueueSchemaError(f"{shown}: {problem}")
    click.echo(f"{shown}: schema version {version}, the one this mqd knows")
