"""``mqd failed``: list, retry and delete the messages in the failed folder
(``mqd.admin.failed``)."""

from __future__ import annotations

from pathlib import Path

import click

from mqd.cli.shared import (
    State,
    confirm,
    duration_option,
    echo_each,
    pass_state,
    plural,
    print_json,
)

__all__ = ["failed"]


@click.group()
def failed() -> None:
    """The failed folder: list, retry, delete.

    Messages mqd gave up on: refused at intake or by policy, undeliverable, bounced.
    """


STAGES = ("intake", "policy", "recovery", "delivery", "unreadable")


@failed.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the records.")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(0),
    help="Show the newest N (0: all); a last line says how many more there are.",
)
@click.option("--stage", type=click.Choice(STAGES), help="Only the messages that failed there.")
@click.option("--sender", help="Only those from this address (or '*@domain').")
@pass_state
def failed_list(
    state: State, as_json: bool, limit: int, stage: str | None, sender: str | None
) -> None:
    """List the failed folder.

    Id, when, stage and sender of each message, its failed recipients and why; the newest
    --limit of them, oldest first.
    """
    import asyncio
    import time

    from mqd.admin.failed import failed_dir, list_failed, matching
    from mqd.admin.renderfailed import render_failed

    messages = matching(asyncio.run(list_failed(failed_dir(state.load()))), stage, sender)
    shown = messages[-limit:] if limit else messages
    if as_json:
        print_json([m.to_dict() for m in shown])
        return
    for line in render_failed(shown, time.time()):
        click.echo(line)
    if len(shown) < len(messages):
        more = len(messages) - len(shown)
        click.echo(f"(and {more} older: --limit 0 lists them all)")


@failed.command("retry")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Every failed message (bounces are skipped).")
@click.option(
    "--spool",
    type=click.Path(file_okay=False, path_type=Path),
    help="Spool to re-inject into. Default: the spool that refused it, else [sendmail] spool, "
    "else the first spool.",
)
@click.option("--verbose", "-v", is_flag=True, help="With --all: a line per message.")
@click.option(
    "--no-progress", is_flag=True, help="With --all: no progress bar, even on a terminal."
)
@pass_state
def failed_retry(
    state: State,
    ids: tuple[str, ...],
    all_: bool,
    spool: Path | None,
    verbose: bool,
    no_progress: bool,
) -> None:
    """Send failed messages again.

    Each is re-injected into a spool (a new queue id, policy checked again), to the recipients
    that failed only, and removed from the failed folder. Bounces are not retried. With --all a
    progress bar shows on a terminal and one line gives the totals (-v: a line per message).
    """
    import asyncio
    import sys

    import mqd.admin.failed as failed_module
    from mqd.cli.progress import maybe_bar

    if not (ids or all_):
        raise click.UsageError("name failed ids, or give --all")
    config = state.load()
    folder = failed_module.failed_dir(config)
    each = verbose or not all_

    async def retry() -> failed_module.RetryReport:
        messages = await (folder.messages() if all_ else folder.find(ids))
        with maybe_bar(len(messages), "retrying", sys.stderr, all_ and not no_progress) as bar:
            return await failed_module.retry(
                config,
                messages,
                spool=spool,
                skip_unretryable=all_,
                done=bar.advance if bar is not None else None,
            )

    report = asyncio.run(retry())
    if each:
        for old_id, written, recipients in report.retried:
            to = f" to {', '.join(f'<{r}>' for r in recipients)}" if recipients else ""
            click.echo(f"retried {old_id}{to}: {written}")
        for old_id, why in report.skipped:
            click.echo(f"mqd: skipped {old_id}: {why}", err=True)
    elif report.retried or report.skipped:
        line = f"retried {plural(len(report.retried), 'message')}"
        if report.skipped:
            line += f", skipped {len(report.skipped)} (bounces and the like; -v says why)"
        click.echo(line)
    if not report.retried and not report.skipped:
        click.echo("no failed messages")


@failed.command("delete")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Every message in the failed folder.")
@click.option(
    "--older-than",
    callback=duration_option,
    metavar="DURATION",
    help="Every message that failed longer ago than this (e.g. 7d).",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--verbose", "-v", is_flag=True, help="With --all or --older-than: each id.")
@pass_state
def failed_delete(
    state: State,
    ids: tuple[str, ...],
    all_: bool,
    older_than: float | None,
    yes: bool,
    verbose: bool,
) -> None:
    """Remove failed messages for good.

    Both go: the message and its reason record. Name them by id, or give --all or
    --older-than.
    """
    import asyncio
    import time

    import mqd.admin.failed as failed_module

    if bool(ids) + all_ + (older_than is not None) != 1:
        raise click.UsageError("name failed ids, or give --all, or --older-than DURATION")
    config = state.load()
    folder = failed_module.failed_dir(config)
    if ids:
        messages = asyncio.run(folder.find(ids))
        confirm(f"Delete {', '.join(m.id for m in messages)} from the failed folder?", yes)
        deleted = asyncio.run(failed_module.delete(config, messages))
        echo_each("deleted", deleted, "nothing deleted")
        return
    before = time.time() - (older_than or 0.0) if older_than is not None else float("inf")
    count = sum(1 for m in asyncio.run(folder.messages()) if m.failed_at < before)
    if not count:
        click.echo("nothing deleted")
        return
    confirm(f"Delete {count} message(s) from the failed folder for good?", yes)
    deleted = asyncio.run(folder.prune(before))
    if verbose:
        echo_each("deleted", deleted, "nothing deleted")
    click.echo(f"deleted {len(deleted)} failed message(s)")
