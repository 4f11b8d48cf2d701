"""SMTP submission's helpers: ``mqd smtpd passwd``."""

from __future__ import annotations

import sys

import click

__all__ = ["smtpd"]


@click.group()
def smtpd() -> None:
    """SMTP submission ([[smtpd]]) helpers."""


@smtpd.command("passwd")
@click.argument("name")
def smtpd_passwd(name: str) -> None:
    """Print a users_file line for the login NAME: 'NAME:<scrypt hash>'.

    Asks for the password twice on a terminal; otherwise reads it from the first line of
    standard input. Append the line to the [[smtpd]] users_file (add ':senders' to give the
    login its own allowed senders) and run 'mqd reload'.
    """
    from mqd.intake.smtpd.users import hash_password

    if ":" in name or not name.strip() or any(c.isspace() for c in name):
        raise click.BadParameter("a login has no colon and no blank", param_hint="NAME")
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise click.UsageError("the password is empty")
    click.echo(f"{name}:{hash_password(password)}")
