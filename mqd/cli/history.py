"""Tracking from the command line: ``mqd history`` (one message's timeline) and ``mqd events``
(the newest events, like tail). Both read the event store directly, daemon running or not."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from mqd.cli.shared import State, pass_state, print_json
from mqd.config.schema import Config
from mqd.errors import ConfigError
from mqd.exitcodes import ExitCode

__all__ = ["events", "history"]

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from mqd.tracking.answers import FeedEvent
    from mqd.tracking.eventstore import EventStore


def _tracking_store(config: Config) -> AbstractContextManager[EventStore]:
    """The event store, read-only, for a ``with`` block; a clear error when tracking is off or
    has no database yet, and a TrackingError (exit 74) naming the file (or the database) when
    it is damaged or cannot be read, whether at opening or by a query. With the event store in
    the queue's PostgreSQL database, any node reads every node's history."""
    from mqd.config.tracking import tracking_database
    from mqd.tracking.sqlitefile import reading

    path = config.tracking_path
    if not config.tracking.enabled:
        raise ConfigError("tracking is off ([tracking] enabled = false): there is no history")
    database = tracking_database(config)
    if database is not None:
        from mqd.queue.postgresql.connect import Database
        from mqd.tracking import pghome

        password = database.password.reveal() if database.password else None
        return pghome.reading(Database(database.dsn, password))
    if not path.exists():
        raise ConfigError(
            f"no event store at {path} yet: it is created when 'mqd run' starts with "
            "[tracking] enabled"
        )
    return reading(path)


@click.command()
@click.argument("key", metavar="ID|MESSAGE-ID|ADDRESS", required=False)
@click.option(
    "--account",
    default=None,
    metavar="NAME",
    help="The newest messages of this [[account]] (the history per user); KEY narrows them.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of histories.")
@click.option(
    "--limit", default=20, show_default=True, type=click.IntRange(1), help="At most this many."
)
@pass_state
def history(state: State, key: str | None, account: str | None, as_json: bool, limit: int) -> None:
    """Show a message's timeline: accepted, queued, dispatched, delivered, opened ...

    KEY is mqd's queue id, a Message-ID (with or without <>), or an address: every message
    from or to it is shown, newest first. With --account, the account's newest messages (of
    those KEY names, if given). Reads the event store directly, so it works whether or not the
    daemon runs. Exit code 1 when nothing matches.
    """
    from mqd.tracking.queries import history as find
    from mqd.tracking.queries import of_account
    from mqd.tracking.render import history_lines

    if key is None and account is None:
        raise click.UsageError("give a KEY (a queue id, Message-ID or address) or --account")
    with _tracking_store(state.load()) as store:
        if account is None:
            found = find(store, str(key), limit)
        else:
            found = of_account(store, account, key, limit)
    if as_json:
        print_json([item.to_dict() for item in found])
    else:
        for i, item in enumerate(found):
            if i:
                click.echo()
            for line in history_lines(item):
                click.echo(line)
    if not found:
        wanted = (
            repr(key)
            if account is None
            else f"account {account!r}" + (f" and {key!r}" if key else "")
        )
        click.echo(f"mqd: no message matches {wanted}", err=True)
        sys.exit(ExitCode.FAILURE)


@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they come.")
@click.option(
    "--last", "-n", default=20, show_default=True, type=click.IntRange(0), help="Start with these."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
@click.option(
    "--interval",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.05),
    help="With --follow, seconds between looks at the store.",
)
@pass_state
def events(state: State, follow: bool, last: int, as_json: bool, interval: float) -> None:
    """Print the newest events of every message (like tail), and with --follow the new ones
    as they are recorded (Ctrl-C stops)."""
    import contextlib
    import json
    import time

    from mqd.tracking.render import event_line

    def show(batch: list[FeedEvent]) -> None:
        for event in batch:
            if as_json:
                click.echo(json.dumps(event.to_dict(), ensure_ascii=False, default=str))
            else:
                click.echo(event_line(event, with_message=True))

    with _tracking_store(state.load()) as store, contextlib.suppress(KeyboardInterrupt):
        position = store.last_position(last)
        while True:
            batch = store.events_after(position, 500)
            show(batch)
            if batch:
                position = batch[-1].position
                continue
            if not follow:
                return
            time.sleep(interval)
