"""The relay's config keys, read and checked: ``read_settings(options)`` -> ``SendGridSettings``."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from mqd import Options, Secret

from .webhook import DEFAULT_MAX_AGE, load_verification_key

__all__ = ["DEFAULT_BASE_URL", "SendGridSettings", "read_settings"]

DEFAULT_BASE_URL = "https://api.sendgrid.com"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


@dataclass(frozen=True)
class SendGridSettings:
    api_key: Secret = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    timeout: float = 30.0
    max_connections: int = 10
    sandbox_mode: bool = False
    categories: tuple[str, ...] = ()
    ip_pool: str | None = None
    click_tracking: bool | None = None
    open_tracking: bool | None = None
    #: SendGrid's Signed Event Webhook key: without one the relay serves no webhook.
    webhook_key: ec.EllipticCurvePublicKey | None = None
    webhook_max_age: float = DEFAULT_MAX_AGE

    @property
    def host(self) -> str:
        return httpx.URL(self.base_url).host

    def request_fields(self) -> dict[str, Any]:
        """The parts of every request that come from the config, not from the message."""
        fields: dict[str, Any] = {}
        if self.sandbox_mode:
            fields["mail_settings"] = {"sandbox_mode": {"enable": True}}
        if self.categories:
            fields["categories"] = list(self.categories)
        if self.ip_pool:
            fields["ip_pool_name"] = self.ip_pool
        tracking = {
            name: {"enable": enable}
            for name, enable in (
                ("click_tracking", self.click_tracking),
                ("open_tracking", self.open_tracking),
            )
            if enable is not None
        }
        if tracking:
            fields["tracking_settings"] = tracking
        return fields


def read_settings(options: Options) -> SendGridSettings:
    """Every key of the relay's table, through ``options`` (ConfigError naming a bad one)."""
    api_key = options.secret("api_key", required=True)
    assert api_key is not None  # required=True raises instead of returning None
    settings = SendGridSettings(
        api_key=api_key,
        base_url=_base_url(options),
        timeout=options.duration("timeout", "30s"),
        max_connections=options.integer("max_connections", 10, minimum=1),
        sandbox_mode=options.boolean("sandbox_mode", False),
        categories=_categories(options),
        ip_pool=options.string("ip_pool", None),
        click_tracking=options.boolean("click_tracking", None),
        open_tracking=options.boolean("open_tracking", None),
        webhook_key=_webhook_key(options),
        webhook_max_age=options.duration("webhook_max_age", "5m"),
    )
    if settings.timeout <= 0:
        raise options.error("timeout", 'must be more than 0s, e.g. "30s"')
    if settings.webhook_max_age <= 0:
        raise options.error(
            "webhook_max_age", 'must be more than 0s: how far a signed timestamp may be, e.g. "5m"'
        )
    if settings.ip_pool is not None and not 2 <= len(settings.ip_pool) <= 64:
        raise options.error("ip_pool", "an IP pool name is 2 to 64 characters long")
    return settings


def _base_url(options: Options) -> str:
    raw = options.string("base_url", DEFAULT_BASE_URL)
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, TypeError) as exc:
        raise options.error("base_url", f"not a URL ({exc}): e.g. {DEFAULT_BASE_URL!r}") from None
    if url.scheme not in ("https", "http") or not url.host:
        raise options.error("base_url", f"{raw!r} is not an http(s) URL: e.g. {DEFAULT_BASE_URL!r}")
    if url.query or url.fragment:
        raise options.error("base_url", f"{raw!r} has a query or fragment: give only the base")
    if url.scheme == "http" and not _is_loopback(url.host):
        raise options.error(
            "base_url",
            f"{raw!r} would send the API key in clear text: use https:// (plain http is "
            "accepted only for a server on this machine, such as a test double)",
        )
    return str(url).rstrip("/")


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _categories(options: Options) -> tuple[str, ...]:
    categories: tuple[str, ...] = options.string_list("categories", [])
    problem = None
    if len(categories) > 10:
        problem = f"SendGrid takes at most 10 categories, got {len(categories)}"
    elif len(set(categories)) != len(categories):
        problem = "holds the same category twice"
    for category in categories:
        if not category or len(category) > 255 or not category.isascii():
            problem = f"{category!r}: a category is 1 to 255 ASCII characters"
    if problem:
        raise options.error("categories", problem)
    return categories


def _webhook_key(options: Options) -> ec.EllipticCurvePublicKey | None:
    """``webhook_verification_key`` inline or from ``webhook_verification_key_file``: a public
    key, so an inline one is fine in a readable config file (unlike ``api_key``)."""
    inline: str | None = options.string("webhook_verification_key", None)
    path = options.filepath("webhook_verification_key_file", None)
    if inline is not None and path is not None:
        raise options.error(
            "webhook_verification_key_file",
            "give only one of webhook_verification_key or webhook_verification_key_file",
        )
    if path is not None:
        key = "webhook_verification_key_file"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise options.error(key, f"cannot read {path}: {reason}") from None
    elif inline is not None:
        key, text = "webhook_verification_key", inline
    else:
        return None
    try:
        return load_verification_key(text)
    except ValueError as exc:
        raise options.error(
            key,
            f"{exc}: copy the Verification Key SendGrid shows under Settings > Mail Settings > "
            "Event Webhook > Signed Event Webhook (base64, starting with MFkw)",
        ) from None
