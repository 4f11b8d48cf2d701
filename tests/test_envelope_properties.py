"""Properties of envelope parsing over arbitrary input (hypothesis): whatever a spool file holds,
parsing either refuses it with MessageParseError or yields an envelope SMTP can carry safely."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqd.config.senders import sender_allowed
from mqd.errors import MessageParseError
from mqd.message.envelope import address_problem, parse_message, prepare_for_relay

FORBIDDEN = re.compile(r"[\r\n\x00<>\s]")
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

header_names = st.sampled_from(
    ["From", "To", "Cc", "Bcc", "Sender", "Subject", "X-Sender", "X-Receiver", "Message-ID"]
)
hostile_text = st.lists(
    st.sampled_from([*'ab@.<>"() ,;:\\\r\n\t\x00\u0430\uff20=?q', "example.com"]),
    max_size=30,
).map("".join)
header_lines = st.lists(
    st.tuples(header_names, hostile_text).map(lambda t: f"{t[0]}: {t[1]}"), max_size=8
)
messages = st.one_of(
    st.binary(max_size=400),
    st.tuples(header_lines, st.sampled_from(["\r\n", "\n", "\r"]), st.text(max_size=80)).map(
        lambda t: (t[1].join(t[0]) + t[1] * 2 + t[2]).encode("utf-8", "surrogatepass")
    ),
)


def parsed_or_none(data: bytes):  # type: ignore[no-untyped-def]
    try:
        return parse_message(data)
    except MessageParseError:
        return None


@SETTINGS
@given(messages)
def test_parsing_never_raises_anything_but_a_parse_error(data: bytes) -> None:
    parsed_or_none(data)


@SETTINGS
@given(messages)
def test_an_accepted_envelope_holds_only_addresses_smtp_can_carry(data: bytes) -> None:
    parsed = parsed_or_none(data)
    if parsed is None:
        return
    for address in (parsed.sender, *parsed.recipients):
        assert not FORBIDDEN.search(address), address
        assert address_problem(address) is None
        assert address.count("@") >= 1


@SETTINGS
@given(messages)
def test_prepared_messages_keep_no_envelope_lines_or_bcc(data: bytes) -> None:
    if parsed_or_none(data) is None:
        return
    prepared = prepare_for_relay(data, message_id="<x@y.test>")
    head = re.split(rb"\r?\n\r?\n", prepared, maxsplit=1)[0]
    for name in (b"bcc", b"x-sender", b"x-receiver"):
        assert not re.search(rb"(?im)^" + name + rb":", head)


domains = st.from_regex(r"[a-z]{1,8}\.(com|net|test)", fullmatch=True)
locals_ = st.from_regex(r"[a-zA-Z0-9._+-]{1,10}", fullmatch=True)


@SETTINGS
@given(locals_, domains, domains)
def test_a_domain_pattern_never_allows_another_domain(local: str, allowed: str, other: str) -> None:
    sender = f"{local}@{other}"
    assert sender_allowed(sender, [f"*@{allowed}"]) == (other == allowed)


@SETTINGS
@given(locals_, locals_, domains)
def test_an_exact_pattern_allows_only_that_mailbox(local: str, other: str, domain: str) -> None:
    allowed = sender_allowed(f"{other}@{domain}", [f"{local}@{domain}"])
    assert allowed == (other.casefold() == local.casefold())


#: ASCII spellings and the other characters Unicode's case mappings make equal to them (long s,
#: Kelvin sign, dotted and dotless i, sharp s, the ffi ligature).
LOOK_ALIKES = {
    "s": ("s", "S", "\u017f"),
    "k": ("k", "K", "\u212a"),
    "i": ("i", "I", "\u0130", "\u0131"),
    "ss": ("ss", "SS", "\u00df"),
    "ffi": ("ffi", "FFI", "\ufb03"),
}


@st.composite
def spelt_two_ways(draw: st.DrawFn) -> tuple[str, str]:
    """A local part in ASCII, and the same spelt with some of its letters' variants."""
    parts = draw(st.lists(st.sampled_from(sorted(LOOK_ALIKES)), min_size=1, max_size=6))
    return "".join(parts), "".join(draw(st.sampled_from(LOOK_ALIKES[p])) for p in parts)


@SETTINGS
@given(spelt_two_ways())
def test_an_exact_pattern_never_matches_a_unicode_look_alike(spellings: tuple[str, str]) -> None:
    """Only ASCII letters compare case-insensitively: a pattern never allows a mailbox that
    differs from it by anything else (\u017fales@ for sales@, o\ufb03ce@ for office@)."""
    local, other = spellings
    allowed = sender_allowed(f"{other}@example.com", [f"{local}@example.com"])
    assert allowed == other.isascii()
