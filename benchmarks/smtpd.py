#!/usr/bin/env python3
"""SMTP submission's intake rate: N messages over ``[[smtpd]]`` into a real ``mqd run``, each
acknowledged (250) only once durable (fsync stays on), by C client processes at once, each one
SMTP session sending its share one message after the other (smtplib, the message composed
once).

    .venv/bin/python benchmarks/smtpd.py --messages 4000 --clients 1 16

The relay is the in-memory one (nothing leaves the machine): what is measured is the SMTP
session, the hand-over (sender policy, the durable accept: concurrent hand-overs share a batch)
and the in-process delivery. Printed: the steady rate (between 10% and 90% answered) and mqd's
CPU per message over the same span, from /proc. For the comparison with Postfix (smtp-source,
a connection per message, relayed to smtp-sink) see smtpd-side-by-side.sh.
"""

from __future__ import annotations

import argparse
import multiprocessing.sharedctypes
import smtplib
import tempfile
from functools import partial
from pathlib import Path

from steady import Daemon, config_file, free_port, run_clients, wait_listening

MESSAGE = (
    b"From: app@example.com\r\nTo: alice@example.net\r\nSubject: bench\r\n\r\n"
    + (b"x" * 74 + b"\r\n") * 26
)


def client(port: int, count: int, answered: multiprocessing.sharedctypes.Synchronized[int]) -> None:
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        smtp.ehlo("bench.example.com")
        for _ in range(count):
            smtp.sendmail("app@example.com", ["alice@example.net"], MESSAGE)
            with answered.get_lock():
                answered.value += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--profile", type=Path, help="py-spy's raw profile of mqd (stacks.py)")
    parser.add_argument("--log", type=Path, help="mqd's log (default: dropped with its queue)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = config_file(
            Path(tmp, "mqd.toml"),
            f'[queue]\ndir = "{tmp}/queue"\n[relays.mem]\nplugin = "memory"\n'
            f'[[spool]]\npath = "{tmp}/spool"\n'
            f'[[smtpd]]\nlisten = ["127.0.0.1:{port}"]\nallowed_senders = ["*@example.com"]\n',
        )
        daemon = Daemon(config, args.log or Path(tmp, "mqd.log"), args.profile)
        try:
            wait_listening(port, daemon)
            for clients in args.clients:
                steady = run_clients(partial(client, port), clients, args.messages, daemon)
                print(f"{clients:3d} client(s): {steady.line()}", flush=True)
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
