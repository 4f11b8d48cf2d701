"""``mqd suppress``: the suppression list (``mqd.delivery.suppression``): recipients mqd does
not send to again, per account."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from mqd.cli.shared import State, admin_request, duration_option, pass_state, plural, print_json

__all__ = ["suppress"]

_ACCOUNT_HELP = 'The [[account]] it applies to; "" (the default) is mail no account claims.'


@click.group()
def suppress() -> None:
    """The suppression list: list, add, remove, import, export.

    A recipient that bounced for a bad address (5.1.x) or that a provider reports bounced or
    complained is not sent to again (per account, for [suppression] bounce_for /
    complaint_for); a later message records it as 'suppressed' and bounces nothing.
    """


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "for good"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


@suppress.command("list")
@click.option("--account", default=None, help="Only this account's ('' for no account).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead.")
@pass_state
def list_(state: State, account: str | None, as_json: bool) -> None:
    """The addresses suppressed now, newest first, and why."""
    rows = admin_request(state.load(), "suppress_list", account=account)
    if as_json:
        print_json(rows)
        return
    for row in rows:
        where = f" [{row['account']}]" if row["account"] else ""
        click.echo(
            f"{row['address']}{where}  {row['kind']} since {_when(row['since'])}, "
            f"until {_when(row['until'])}: {row['reason']}"
        )
    click.echo(f"{plural(len(rows), 'address', 'addresses')} suppressed")


@suppress.command()
@click.argument("addresses", nargs=-1, required=True)
@click.option("--account", default="", help=_ACCOUNT_HELP)
@click.option("--reason", default="added by the administrator", show_default=True)
@click.option(
    "--for",
    "for_seconds",
    default=None,
    callback=duration_option,
    metavar="DURATION",
    help="How long ('30d'); without it, for good.",
)
@pass_state
def add(
    state: State, addresses: tuple[str, ...], account: str, reason: str, for_seconds: float | None
) -> None:
    """Suppress ADDRESSES (mqd does not send to them until removed or lapsed)."""
    bad = [address for address in addresses if "@" not in address]
    if bad:
        raise click.BadParameter(f"not an address: {', '.join(bad)}", param_hint="ADDRESSES")
    result = admin_request(
        state.load(),
        "suppress_add",
        addresses=list(addresses),
        account=account,
        reason=reason,
        for_seconds=for_seconds,
    )
    added = set(result["added"])
    click.echo(f"suppressed {plural(len(added), 'address', 'addresses')}")
    for address in addresses:
        if address not in added:
            click.echo(f"  {address}: already suppressed (as long or longer)")


@suppress.command()
@click.argument("addresses", nargs=-1, required=True)
@click.option("--account", default=None, help="Only from this account's list (default: all).")
@pass_state
def remove(state: State, addresses: tuple[str, ...], account: str | None) -> None:
    """Take ADDRESSES off the list: mail goes to them again."""
    result = admin_request(
        state.load(), "suppress_remove", addresses=list(addresses), account=account
    )
    removed = result["removed"]  # (once each: mqd.admin.fanout merges the workers' lists)
    click.echo(f"removed {plural(len(removed), 'suppression', 'suppressions')}")
    if not removed:
        sys.exit(1)


@suppress.command("import")
@click.argument("source", type=click.File("r", encoding="utf-8"))
@pass_state
def import_(state: State, source: Any) -> None:
    """Add the rows of a CSV file (SOURCE, or - for standard input).

    Columns: address (required), account, kind, reason, since, until (Unix times; an empty
    until is for good), as 'mqd suppress export' writes them.
    """
    result = admin_request(state.load(), "suppress_import", csv_text=source.read())
    click.echo(f"imported {result['imported']} of {plural(result['rows'], 'row', 'rows')}")


@suppress.command()
@click.option("--account", default=None, help="Only this account's ('' for no account).")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of standard output.",
)
@pass_state
def export(state: State, account: str | None, output: Path | None) -> None:
    """The list as CSV (address, account, kind, reason, since, until)."""
    from mqd.delivery.suppression import Suppression, to_csv

    rows = admin_request(state.load(), "suppress_list", account=account)
    text = to_csv(Suppression(**row) for row in rows)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {plural(len(rows), 'suppression', 'suppressions')} to {output}")
