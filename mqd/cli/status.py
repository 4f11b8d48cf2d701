"""``mqd status``: daemon, queue and relay health, and with ``--check`` an exit code for
monitoring."""

from __future__ import annotations

import sys

import click

from mqd.cli.shared import State, admin_request, duration_option, pass_state, print_json
from mqd.exitcodes import ExitCode

__all__ = ["CHECK_CRITICAL", "status"]

#: ``mqd status --check`` when no daemon runs: Nagios' and Icinga's CRITICAL (1 is WARNING).
CHECK_CRITICAL = 2


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--check",
    is_flag=True,
    help="For monitoring: exit 2 when no daemon runs, 1 when something needs attention "
    "(something paused by a fault, a relay's circuit open; with --warn-age, a message waiting "
    "too long), listing each problem on stderr; 0 when all is well.",
)
@click.option(
    "--warn-age",
    callback=duration_option,
    metavar="DURATION",
    help="With --check (implied): a problem when the oldest message waited longer, e.g. 1h.",
)
@pass_state
def status(state: State, as_json: bool, check: bool, warn_age: float | None) -> None:
    """Daemon, queue and relay health at a glance.

    Whether the daemon runs, the queue by state, the oldest message, the failed count and each
    relay's health.
    """
    from mqd.admin.render import render_status, status_problems

    result = admin_request(state.load(), "status")
    if as_json:
        print_json(result)
    else:
        for line in render_status(result):
            click.echo(line)
    if check or warn_age is not None:
        if not result.get("running"):
            # A dead daemon is the first thing a monitor must hear about (Nagios: CRITICAL).
            click.echo("mqd: critical: no mqd daemon is running on this queue", err=True)
            sys.exit(CHECK_CRITICAL)
        problems = status_problems(result, warn_age)
        for problem in problems:
            click.echo(f"mqd: warning: {problem}", err=True)
        if problems:
            sys.exit(ExitCode.FAILURE)
