"""The commented starter config that ``mqd init`` writes (values rendered by tomli-w)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from mqd.config.paths import default_paths
from mqd.relays.smtp.settings import DEFAULT_PORTS

__all__ = ["StarterOptions", "render_starter"]


@dataclass
class StarterOptions:
    host: str = "smtp.example.com"
    port: int | None = None
    security: str = "starttls"
    username: str = "noreply@example.com"
    password_file: str = "smtp-password"  # noqa: S105 - a file name, not a secret
    allowed_senders: Sequence[str] = field(default_factory=lambda: ["noreply@example.com"])

    @property
    def domain(self) -> str:
        for address in (*self.allowed_senders, self.username):
            if "@" in address:
                return address.rpartition("@")[2]
        return "example.com"


def _kv(key: str, value: Any, *comment: str) -> str:
    lines = [f"# {line}" if line else "#" for line in comment]
    lines.append(tomli_w.dumps({key: value}).strip())
    return "\n".join(lines)


def _section(*blocks: str) -> str:
    return "\n\n".join(blocks)


def render_starter(options: StarterOptions) -> str:
    """The text of a starter ``mqd.toml``: every key commented, ready to edit."""
    paths = default_paths()
    port = options.port or DEFAULT_PORTS[options.security]
    if options.security == "none":
        credentials = [
            '# security = "none" is clear text: mqd refuses to send a username and password\n'
            "# over it. Use it only for a relay that trusts this host without a login."
        ]
    else:
        credentials = [
            _kv("username", options.username),
            _kv(
                "password_file",
                options.password_file,
                "A file that holds only the password (chmod 600), relative to this file.",
                'Or: password_env = "MQD_SMTP_PASSWORD".',
            ),
        ]
    sections = [
        "# mqd configuration. Every key is described in docs/configuration.md.\n"
        "# Check this file with:  mqd config check",
        _section(
            "[queue]",
            _kv(
                "dir",
                str(paths.queue_dir),
                "Queue state and the failed/ folder. Put it on the same filesystem as the",
                "spools so that claiming a message is a rename, not a copy.",
            ),
            _kv("concurrency", 20, "Deliveries in progress at once, across all relays."),
            _kv(
                "bounce_sender",
                f"mailer-daemon@{options.domain}",
                "Header From of bounces (delivery status notifications). Their envelope",
                "sender is always <>, so a bounce never bounces.",
            ),
            _kv("max_message_size", "25MiB", "Larger spool files go to failed/ unread."),
        ),
        _section(
            "[queue.retry]",
            _kv(
                "initial",
                "5m",
                "After a temporary failure (4xx, timeout) retry after `initial`,",
                "doubling each time up to `max`; bounce what is still undelivered after",
                "`lifetime`.",
            ),
            _kv("max", "1h"),
            _kv("lifetime", "5d"),
        ),
        _section(
            "# Applications drop finished messages here: write a temporary name (a dotfile\n"
            "# or *.tmp), then rename it to *.eml. Add a [[spool]] table per directory.\n"
            "[[spool]]",
            _kv("path", str(paths.spool_dir)),
            _kv("relay", "main", "The [relays.<name>] table that delivers this spool's mail."),
            _kv(
                "allowed_senders",
                list(options.allowed_senders),
                "Only these senders are relayed: exact addresses or '*@domain', for the",
                "envelope sender and every From address (check_from = false: the envelope only).",
                "mqd is never an open relay; anything else goes to failed/ unsent.",
            ),
        ),
        _section(
            "[relays.main]",
            _kv("plugin", "smtp", "'smtp' is built in; 'mqd plugins' lists the installed ones."),
            _kv("host", options.host),
            _kv("port", port),
            _kv(
                "security",
                options.security,
                '"starttls" (port 587) or "tls" (port 465): the certificate is verified.',
                '"none" is clear text and refuses credentials.',
            ),
            *credentials,
        ),
        "# Every message's timeline (mqd history), on by default: docs/tracking.md.\n"
        "# [tracking]\n"
        '# retention = "30d"\n'
        "\n"
        "# Provider webhooks (/webhooks/<relay>), the JSON API (/api/v1/) and the web view\n"
        "# (/) on http://127.0.0.1:8025/, for this machine only unless a token is set.\n"
        "# [http]\n"
        "# enabled = true\n"
        "\n"
        "# Each status change POSTed to your application, signed with HMAC-SHA256.\n"
        "# [notify]\n"
        '# url = "https://app.example.com/mqd-events"\n'
        '# secret_file = "notify-secret"',
    ]
    return "\n\n".join(sections) + "\n"
