"""``mqd queue``: list, show, retry, flush, hold, release, delete and bounce queued messages,
through the running daemon or on the queue files (``mqd.admin.fanout``)."""

from __future__ import annotations

import click

from mqd.cli.shared import State, admin_request, confirm, echo_each, pass_state, print_json

__all__ = ["queue"]


@click.group()
def queue() -> None:
    """Administer the queue (daemon running or not).

    With a running daemon the commands go through its control socket; without one they take
    the queue lock and work on the files.
    """


@queue.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object a message.")
@click.option("--relay", help="Only messages routed through this relay.")
@click.option(
    "--state",
    "wanted_state",
    type=click.Choice(["active", "waiting", "scheduled", "deferred", "held"]),
    help="Only messages in this state.",
)
@pass_state
def queue_list(state: State, as_json: bool, relay: str | None, wanted_state: str | None) -> None:
    """List the queue, like mailq.

    Id, age, size, state, attempts, next attempt and sender of each message, and each recipient
    with its last reply.
    """
    import time

    from mqd.admin.render import render_queue

    rows = admin_request(state.load(), "list", relay=relay, state=wanted_state)
    if as_json:
        print_json(rows)
        return
    filtered = " and ".join(
        f"{name} {value}" for name, value in (("relay", relay), ("state", wanted_state)) if value
    )
    for line in render_queue(rows, time.time(), filtered=f"with {filtered}" if filtered else ""):
        click.echo(line)


@queue.command("show")
@click.argument("entry_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_state
def queue_show(state: State, entry_id: str, as_json: bool) -> None:
    """Show one message in full.

    Envelope, recipients, attempt history and headers. ID may be the start of a queue id.
    """
    import time

    from mqd.admin.render import render_show

    row = admin_request(state.load(), "show", id=entry_id)
    if as_json:
        print_json(row)
        return
    for line in render_show(row, time.time()):
        click.echo(line)


@queue.command("retry")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Every message in the queue.")
@click.option("--relay", help="Every message routed through this relay.")
@click.option("--verbose", "-v", is_flag=True, help="With --all or --relay: each id.")
@pass_state
def queue_retry(
    state: State, ids: tuple[str, ...], all_: bool, relay: str | None, verbose: bool
) -> None:
    """Try messages again now.

    Instead of at their next attempt; held ones stay held. With --all or --relay, the relays'
    circuit breakers are reset too, and one line gives the total (-v: a line per message).
    """
    if not (ids or all_ or relay):
        raise click.UsageError("name queue ids, or give --all or --relay NAME")
    result = admin_request(state.load(), "retry", ids=list(ids) or None, all=all_, relay=relay)
    echo_each(
        "retrying",
        result["retried"],
        "nothing to retry (held messages stay held)",
        total=not (ids or verbose),
    )


@queue.command("flush")
@pass_state
def queue_flush(state: State) -> None:
    """Retry every message now (what SIGUSR1 does to the daemon)."""
    result = admin_request(state.load(), "flush")
    count = len(result["retried"])
    click.echo(f"flushed: {count} message{'s' if count != 1 else ''} due now")


@queue.command("hold")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@pass_state
def queue_hold(state: State, ids: tuple[str, ...]) -> None:
    """Keep messages in the queue without trying them, until released."""
    result = admin_request(state.load(), "hold", ids=list(ids))
    echo_each("held", result["held"], "nothing held")


@queue.command("release")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Every held message.")
@click.option("--verbose", "-v", is_flag=True, help="With --all: each id.")
@pass_state
def queue_release(state: State, ids: tuple[str, ...], all_: bool, verbose: bool) -> None:
    """Let held messages go: they are tried now.

    With --all one line gives the total (-v: a line per message)."""
    if not (ids or all_):
        raise click.UsageError("name queue ids, or give --all")
    result = admin_request(state.load(), "release", ids=list(ids) or None, all=all_)
    echo_each(
        "released",
        result["released"],
        "nothing released (no held message matched)",
        total=not (ids or verbose),
    )


@queue.command("delete")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def queue_delete(state: State, ids: tuple[str, ...], yes: bool) -> None:
    """Remove messages for good (no bounce).

    They are not delivered, get no bounce and do not go to the failed folder.
    """
    config = state.load()
    confirm(f"Delete {', '.join(ids)} for good (no delivery, no bounce)?", yes)
    result = admin_request(config, "delete", ids=list(ids))
    echo_each("deleted", result["deleted"], "nothing deleted")


@queue.command("bounce")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def queue_bounce(state: State, ids: tuple[str, ...], yes: bool) -> None:
    """Return messages to their senders now.

    Every recipient not yet delivered fails: a bounce (DSN) goes to the sender and the message
    to the failed folder.
    """
    config = state.load()
    confirm(f"Return {', '.join(ids)} to the sender now (a bounce for each)?", yes)
    result = admin_request(config, "bounce", ids=list(ids))
    echo_each("bounced", result["bounced"], "nothing bounced")
