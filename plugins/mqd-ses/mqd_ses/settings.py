"""The ``[relays.<name>]`` keys of ``plugin = "ses"``, read and checked once at start-up.

Everything that can be checked without talking to AWS is checked here, so that a mistake is a
``ConfigError`` naming the key (``mqd config check`` shows it) rather than mail piling up: the
region can be found, the profile exists, the endpoint is a URL, tag names and values are what SES
accepts. Credentials are not looked at here: they are resolved (and may change, e.g. an instance
role) when the relay first sends.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import botocore.exceptions
import botocore.session
from mqd import ConfigError, Options

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MQD_ID_TAG",
    "SESSettings",
    "WebhookSettings",
    "is_loopback",
    "read_settings",
]

log = logging.getLogger("mqd.relay.ses")

#: SES API v2's limit on a message, attachments included (the SES quotas page: "40 MB").
#: SES measures it in binary megabytes (API v1's refusal reads "more than the allowed 10485760
#: bytes" for its 10 MB), on the MIME message as mqd hands it over.
DEFAULT_MAX_MESSAGE_SIZE = 40 * 1024 * 1024
#: The message tag that carries mqd's queue id (for correlating SES events with mqd's).
MQD_ID_TAG = "mqd_id"

#: What SES accepts in a message tag's name and value (SESv2 MessageTag).
_TAG = re.compile(r"[A-Za-z0-9_-]{1,256}")
#: What SES accepts as a configuration set name.
_CONFIGURATION_SET = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: An SNS topic ARN (any partition: aws, aws-cn, aws-us-gov; topic names per CreateTopic).
_TOPIC_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?")
#: SNS retries a delivery to an HTTP(S) endpoint for at most an hour (a hard limit), keeping the
#: message's Timestamp: a younger limit would refuse SNS's own late retries.
DEFAULT_WEBHOOK_MAX_AGE = "1h"


@dataclass(frozen=True)
class WebhookSettings:
    """The ``webhook_*`` keys: SES events through SNS, served at ``/webhooks/<relay name>``."""

    #: The SNS TopicArns whose messages are taken.
    topics: frozenset[str]
    #: Extra URL prefixes a SigningCertURL or SubscribeURL may start with (tests, private
    #: endpoints), besides SNS's own ``https://sns.<region>.amazonaws.com/``.
    certificate_urls: tuple[str, ...] = ()
    #: A message whose Timestamp is older than this (seconds) is refused as a replay.
    max_age: float = 3600.0


@dataclass(frozen=True)
class SESSettings:
    region: str
    profile: str | None = None
    endpoint_url: str | None = None
    configuration_set: str | None = None
    #: Static message tags added to every message, besides ``mqd_id``.
    tags: tuple[tuple[str, str], ...] = ()
    max_connections: int = 10
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    #: Attempts per API call, botocore's standard retry mode (1 = botocore never retries).
    api_attempts: int = 2
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: The SNS event webhook; None when ``webhook_topics`` is not given.
    webhook: WebhookSettings | None = None


def read_settings(name: str, options: Options) -> SESSettings:
    """The relay's settings from its table. Raises ConfigError naming the key at fault."""
    profile = options.string("profile", None)
    region = options.string("region", None)
    if region is not None and not re.fullmatch(r"[a-z0-9-]{1,64}", region):
        raise options.error("region", f"{region!r} is not an AWS region name like 'eu-west-1'")
    if region is None or profile is not None:  # a named profile must exist in any case
        found = _environment_region(options, profile)
        region = region or found
    if region is None:
        raise _region_required(options)
    endpoint_url = options.string("endpoint_url", None)
    if endpoint_url is not None:
        _check_endpoint(name, options, endpoint_url)
    configuration_set = options.string("configuration_set", None)
    if configuration_set is not None and not _CONFIGURATION_SET.fullmatch(configuration_set):
        raise options.error(
            "configuration_set",
            f"{configuration_set!r} is not a configuration set name: SES names have 1 to 64 "
            "ASCII letters, digits, '_' or '-'",
        )
    return SESSettings(
        region=region,
        profile=profile,
        endpoint_url=endpoint_url,
        configuration_set=configuration_set,
        tags=_read_tags(options),
        max_connections=options.integer("max_connections", 10, minimum=1),
        connect_timeout=_positive(options, "connect_timeout", "10s"),
        read_timeout=_positive(options, "read_timeout", "1m"),
        api_attempts=options.integer("api_attempts", 2, minimum=1),
        max_message_size=_message_size(options),
        webhook=_read_webhook(options),
    )


def _environment_region(options: Options, profile: str | None) -> str | None:
    """The region botocore would use (AWS_DEFAULT_REGION, then the profile's ``region``), else
    AWS_REGION (set by Lambda and ECS, read by the other AWS SDKs but not by botocore).

    Reads the AWS config files; raises ConfigError when ``profile`` is not in them."""
    try:
        session = botocore.session.Session(profile=profile)
        session.get_scoped_config()  # the profile's section: raises when it does not exist
        region = session.get_config_variable("region")
    except botocore.exceptions.ProfileNotFound as exc:
        missing = exc.kwargs.get("profile", profile)  # AWS_PROFILE's, when ``profile`` is unset
        raise options.error(
            "profile",
            f"no AWS profile named {missing!r} in the shared config or credentials files "
            "(~/.aws/config, ~/.aws/credentials, or AWS_CONFIG_FILE / "
            "AWS_SHARED_CREDENTIALS_FILE): create it, or fix the name",
        ) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise options.error("profile", f"the AWS config files cannot be read: {exc}") from None
    region = region or os.environ.get("AWS_REGION")
    return str(region) if region else None


def _region_required(options: Options) -> ConfigError:
    present: list[str] = options.keys()  # Options is not a mapping: no iteration of its own
    typo = difflib.get_close_matches("region", [k for k in present if k != "region"], n=1)
    spelled = f" (is '{typo[0]}' a misspelling of it?)" if typo else ""
    return options.error(
        "region",
        f'is required{spelled}: set region = "eu-west-1" (the region where your SES '
        "identities are verified), or AWS_DEFAULT_REGION in the daemon's environment, or a "
        "region in the AWS profile",
    )


def _check_endpoint(name: str, options: Options, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise options.error(
            "endpoint_url",
            f"{url!r} is not an http(s) URL like 'https://email.eu-west-1.amazonaws.com'",
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        log.warning(
            "relay %s: endpoint_url %s is plain http: messages cross the network unencrypted "
            "(requests are still signed, the secret key is never sent)",
            name,
            url,
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_tags(options: Options) -> tuple[tuple[str, str], ...]:
    table = options.table("tags")
    tags: list[tuple[str, str]] = []
    names: list[str] = table.keys()  # Options is not a mapping: no iteration of its own
    for key in names:
        value = table.raw(key)
        if not _TAG.fullmatch(key):
            raise table.error(
                key,
                "is not a valid SES tag name: 1 to 256 ASCII letters, digits, '_' or '-'",
            )
        if key == MQD_ID_TAG:
            raise table.error(key, f"is reserved: mqd sets {MQD_ID_TAG} to the queue id itself")
        if not isinstance(value, str) or not _TAG.fullmatch(value):
            raise table.error(
                key,
                f"{value!r} is not a valid SES tag value: a string of 1 to 256 ASCII letters, "
                "digits, '_' or '-'",
            )
        tags.append((key, value))
    return tuple(tags)


def _positive(options: Options, key: str, default: str) -> float:
    seconds: float = options.duration(key, default)
    if seconds <= 0:
        raise options.error(key, "must be longer than 0s")
    return seconds


def _message_size(options: Options) -> int:
    size: int = options.size("max_message_size", DEFAULT_MAX_MESSAGE_SIZE)
    if size <= 0:
        raise options.error("max_message_size", "must be at least 1 byte")
    if size > DEFAULT_MAX_MESSAGE_SIZE:
        log.warning(
            "%s.max_message_size is %d bytes, above the %d that SES documents: SES itself "
            "refuses larger messages",
            options.section,
            size,
            DEFAULT_MAX_MESSAGE_SIZE,
        )
    return size


def _read_webhook(options: Options) -> WebhookSettings | None:
    topics: tuple[str, ...] | None = options.string_list("webhook_topics", None)
    urls: tuple[str, ...] = options.string_list("webhook_certificate_urls", [])
    max_age: float = options.duration("webhook_max_age", DEFAULT_WEBHOOK_MAX_AGE)
    if topics is None:
        present: list[str] = options.keys()  # Options is not a mapping: no `in` of its own
        for key in ("webhook_certificate_urls", "webhook_max_age"):
            if key in present:
                raise options.error(
                    key,
                    "has no effect without webhook_topics: list the SNS topic ARNs your SES "
                    'events are published to, e.g. webhook_topics = ["arn:aws:sns:eu-west-1:'
                    '123456789012:ses-events"], or remove this key',
                )
        return None
    if not topics:
        raise options.error(
            "webhook_topics",
            "is empty: list at least one SNS topic ARN, or remove the key to turn the webhook off",
        )
    for topic in topics:
        if topic.endswith(".fifo"):
            raise options.error(
                "webhook_topics",
                f"{topic!r} is a FIFO topic: SES publishes events to standard topics only",
            )
        if not _TOPIC_ARN.fullmatch(topic):
            raise options.error(
                "webhook_topics",
                f"{topic!r} is not an SNS topic ARN like "
                "'arn:aws:sns:eu-west-1:123456789012:ses-events' (the TopicArn the SNS console "
                "shows for the topic)",
            )
    for url in urls:
        _check_certificate_prefix(options, url)
    if max_age <= 0:
        raise options.error("webhook_max_age", "must be longer than 0s")
    return WebhookSettings(topics=frozenset(topics), certificate_urls=urls, max_age=max_age)


def _check_certificate_prefix(options: Options, url: str) -> None:
    key = "webhook_certificate_urls"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise options.error(key, f"{url!r} is not a URL") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise options.error(
            key, f"{url!r} is not an http(s) URL prefix like 'https://sns.internal.example/'"
        )
    if parts.username is not None or parts.query or parts.fragment:
        raise options.error(
            key, f"{url!r}: give a plain prefix, without user, password, query or fragment"
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise options.error(
            key,
            f"{url!r} is plain http to another machine: a certificate fetched so could be "
            "replaced on the way, and with it any message forged. Use https, or http only to "
            "127.0.0.1, ::1 or localhost",
        )
