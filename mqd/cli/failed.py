"""``mqd failed``: list, retry and delete the messages in the failed folder
(``mqd.admin.failed``)."""

from __future__ import annotations

from pathlib import Path

import click

from mqd.cli.shared import State, confirm, echo_each, pass_state, print_json

__all__ = ["failed"]


@click.group()
def failed() -> None:
    """The failed folder: list, retry, delete.

    Messages mqd gave up on: refused at intake or by policy, undeliverable, bounced.
    """


@failed.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the records.")
@pass_state
def failed_list(state: State, as_json: bool) -> None:
    """List the failed folder.

    Id, when, stage and sender of each message, its failed recipients and why.
    """
    import asyncio
    import time

    from mqd.admin.failed import failed_dir, list_failed
    from mqd.admin.render import render_failed

    messages = asyncio.run(list_failed(failed_dir(state.load())))
    if as_json:
        print_json([m.to_dict() for m in messages])
        return
    for line in render_failed(messages, time.time()):
        click.echo(line)


@failed.command("retry")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Every failed message (bounces are skipped).")
@click.option(
    "--spool",
    type=click.Path(file_okay=False, path_type=Path),
    help="Spool to re-inject into. Default: the spool that refused it, else [sendmail] spool, "
    "else the first spool.",
)
@pass_state
def failed_retry(state: State, ids: tuple[str, ...], all_: bool, spool: Path | None) -> None:
    """Send failed messages again.

    Each is re-injected into a spool (a new queue id, policy checked again), to the recipients
    that failed only, and removed from the failed folder. Bounces are not retried.
    """
    import asyncio

    import mqd.admin.failed as failed_module

    if not (ids or all_):
        raise click.UsageError("name failed ids, or give --all")
    config = state.load()
    folder = failed_module.failed_dir(config)

    async def retry() -> failed_module.RetryReport:
        messages = await (folder.messages() if all_ else folder.find(ids))
        return await failed_module.retry(config, messages, spool=spool, skip_unretryable=all_)

    report = asyncio.run(retry())
    for old_id, written, recipients in report.retried:
        to = f" to {', '.join(f'<{r}>' for r in recipients)}" if recipients else ""
        click.echo(f"retried {old_id}{to}: {written}")
    for old_id, why in report.skipped:
        click.echo(f"mqd: skipped {old_id}: {why}", err=True)
    if not report.retried and not report.skipped:
        click.echo("no failed messages")


@failed.command("delete")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def failed_delete(state: State, ids: tuple[str, ...], yes: bool) -> None:
    """Remove failed messages for good.

    Both files go: the message and its reason record.
    """
    import asyncio

    import mqd.admin.failed as failed_module

    config = state.load()
    messages = asyncio.run(failed_module.failed_dir(config).find(ids))
    confirm(f"Delete {', '.join(m.id for m in messages)} from the failed folder?", yes)
    deleted = asyncio.run(failed_module.delete(config, messages))
    echo_each("deleted", deleted, "nothing deleted")
