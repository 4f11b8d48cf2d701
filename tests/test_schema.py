"""The JSON Schema generator behind the OpenAPI document (``mqd.http.schema``): what each
annotation becomes, that an answer's JSON validates against its class's schema, and that every
field of every answer type is in the served document."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS31Validator
from openapi_schema_validator import validate as validate_schema

from mqd.admin.status import FaultStatus, QuotaStatus, RelayStatus, Status, WorkerStatus
from mqd.http.bodies import Error, HistoryList, MessageList
from mqd.http.openapi import openapi
from mqd.http.schema import Components, field_docs
from mqd.tracking.answers import MessageHistory, MessageSummary, RecipientStatus, TimelineEvent
from mqd.tracking.queries import history, message
from mqd.tracking.records import Record
from mqd.tracking.sqlite import SQLiteStore
from mqd.tracking.vocabulary import Status as Word


class Colour(enum.StrEnum):
    """A colour."""

    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Part:
    """One part of a sample."""

    #: What it is called.
    name: str
    colour: Colour | None


@dataclass(frozen=True)
class Sample:
    """A sample with one field of each kind the generator knows."""

    text: str
    count: int
    #: Seconds since the epoch.
    #: (Two lines of comment are one description.)
    at: float
    flag: bool
    maybe: str | None
    number_or_text: int | str
    parts: list[Part]
    fixed: tuple[Part, ...]
    seq: Sequence[int]
    by_name: dict[str, Part]
    mapping: Mapping[str, int]
    anything: dict[str, Any]
    raw: Any
    kind: Literal["a", "b"]
    optional_part: Part | None = None
    #: Defaults make a field optional.
    extras: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MoreSample(Sample):
    """A sample with more."""

    more: int = 0


#: Another class named Part.
AnotherPart = dataclasses.make_dataclass("Part", [("other", int)])


@dataclass(frozen=True)
class Both:
    one: Part
    two: AnotherPart  # type: ignore[valid-type]


def _components(*classes: type) -> dict[str, Any]:
    components = Components()
    for cls in classes:
        components.ref(cls)
    return components.schemas


def _validate(instance: Any, name: str, schemas: dict[str, Any]) -> None:
    """``instance``, as JSON carries it (tuples are arrays), is valid against ``name``."""
    instance = json.loads(json.dumps(instance))
    root = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": schemas}}
    validate_schema(instance, root, cls=OAS31Validator)


def _sample(**changes: Any) -> Sample:
    values: dict[str, Any] = {
        "text": "t",
        "count": 3,
        "at": 1.5,
        "flag": True,
        "maybe": None,
        "number_or_text": "x",
        "parts": [Part("p", Colour.RED)],
        "fixed": (Part("q", None),),
        "seq": [1, 2],
        "by_name": {"p": Part("p", Colour.BLUE)},
        "mapping": {"a": 1},
        "anything": {"nested": [1, {"x": None}]},
        "raw": [1, "two"],
        "kind": "a",
    }
    return Sample(**{**values, **changes})


def test_each_annotation_becomes_its_schema() -> None:
    schemas = _components(Sample)
    assert set(schemas) == {"Sample", "Part", "Colour"}
    sample = schemas["Sample"]
    assert sample["description"] == "A sample with one field of each kind the generator knows."
    assert sample["type"] == "object"
    assert sample["required"] == [f.name for f in dataclasses.fields(Sample)][:-2]
    props = sample["properties"]
    assert list(props) == [f.name for f in dataclasses.fields(Sample)]
    part = {"$ref": "#/components/schemas/Part"}
    assert props["text"] == {"type": "string"}
    assert props["count"] == {"type": "integer"}
    assert props["at"] == {
        "type": "number",
        "description": "Seconds since the epoch. (Two lines of comment are one description.)",
    }
    assert props["flag"] == {"type": "boolean"}
    assert props["maybe"] == {"type": ["string", "null"]}
    assert props["number_or_text"] == {"type": ["integer", "string"]}
    assert props["parts"] == {"type": "array", "items": part}
    assert props["fixed"] == {"type": "array", "items": part}
    assert props["seq"] == {"type": "array", "items": {"type": "integer"}}
    assert props["by_name"] == {"type": "object", "additionalProperties": part}
    assert props["mapping"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert props["anything"] == {"type": "object"}
    assert props["raw"] == {}
    assert props["kind"] == {"enum": ["a", "b"]}
    assert props["optional_part"] == {"anyOf": [part, {"type": "null"}]}
    assert props["extras"]["description"] == "Defaults make a field optional."
    assert schemas["Colour"] == {
        "type": "string",
        "description": "A colour.",
        "enum": ["red", "blue"],
    }
    assert schemas["Part"]["properties"]["colour"] == {
        "anyOf": [{"$ref": "#/components/schemas/Colour"}, {"type": "null"}]
    }


def test_an_instance_validates_and_a_wrong_one_does_not() -> None:
    schemas = _components(Sample)
    _validate(asdict(_sample()), "Sample", schemas)
    _validate(asdict(_sample(optional_part=Part("o", Colour.BLUE), maybe="m")), "Sample", schemas)
    for wrong in (
        {"count": 1.5},
        {"maybe": 3},
        {"parts": [{"name": "p", "colour": "green"}]},
        {"kind": "c"},
        {"by_name": {"p": 1}},
        {"flag": "yes"},
    ):
        with pytest.raises(ValidationError):
            _validate({**asdict(_sample()), **wrong}, "Sample", schemas)
    missing = asdict(_sample())
    del missing["count"]
    with pytest.raises(ValidationError):
        _validate(missing, "Sample", schemas)


def test_a_subclass_is_all_of_its_base_and_its_own_fields() -> None:
    schemas = _components(MoreSample)
    assert schemas["MoreSample"]["allOf"] == [
        {"$ref": "#/components/schemas/Sample"},
        {"type": "object", "properties": {"more": {"type": "integer"}}},
    ]
    assert schemas["MoreSample"]["description"] == "A sample with more."
    sample = _sample()
    values = {f.name: getattr(sample, f.name) for f in dataclasses.fields(sample)}
    _validate(asdict(MoreSample(**values, more=2)), "MoreSample", schemas)


def test_a_field_added_is_in_the_schema() -> None:
    grown = dataclasses.make_dataclass(
        "Grown", [("new_field", list[int])], bases=(Part,), frozen=True
    )
    schemas = _components(grown)
    assert schemas["Grown"]["allOf"][1]["properties"] == {
        "new_field": {"type": "array", "items": {"type": "integer"}}
    }
    assert field_docs(grown) == {}  # no source to read: no descriptions, no error


def test_an_annotation_it_cannot_describe_is_an_error_naming_the_field() -> None:
    @dataclass
    class Odd:
        fine: int
        when: set[int]

    with pytest.raises(TypeError, match=r"Odd\.when: no JSON Schema for set\[int\]"):
        _components(Odd)


def test_two_classes_of_one_name_are_an_error_unless_renamed() -> None:
    with pytest.raises(ValueError, match="two classes are both named 'Part'"):
        _components(Both)
    components = Components({AnotherPart: "OtherPart"})
    components.ref(Both)
    assert set(components.schemas) == {"Both", "OtherPart", "Part", "Colour"}


# -- the served document ------------------------------------------------------------------------


def _properties(schema: dict[str, Any], schemas: dict[str, Any]) -> set[str]:
    """Every property a component's schema names, its bases' (``allOf``) included."""
    names = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        target = part.get("$ref", "").rpartition("/")[2]
        names |= _properties(schemas[target] if target else part, schemas)
    return names


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (Status, "QueueStatus"),
        (RelayStatus, "RelayStatus"),
        (QuotaStatus, "QuotaStatus"),
        (FaultStatus, "FaultStatus"),
        (WorkerStatus, "WorkerStatus"),
        (MessageSummary, "MessageSummary"),
        (MessageHistory, "MessageHistory"),
        (RecipientStatus, "Recipient"),
        (TimelineEvent, "Event"),
        (Error, "Error"),
        (MessageList, "MessageList"),
        (HistoryList, "HistoryList"),
    ],
)
def test_every_field_of_every_answer_is_in_the_document(cls: type, name: str) -> None:
    schemas = openapi()["components"]["schemas"]
    assert _properties(schemas[name], schemas) == {f.name for f in dataclasses.fields(cls)}


def test_a_status_document_validates_with_and_without_a_quota() -> None:
    quota = QuotaStatus(1.5, 100, 3, None, None, 0)
    relay = RelayStatus("smtp", "smtp.example.com:587", "healthy", 0, 0, None, 2)
    status = Status(
        running=True,
        pid=42,
        version="1.0",
        uptime=3.5,
        config=None,
        queue_dir="/q",
        node="n1",
        messages=2,
        by_state={"active": 1, "waiting": 1, "deferred": 0, "held": 0},
        not_read=0,
        bytes=100,
        oldest_age=None,
        failed=0,
        spools=["/s"],
        relays={"plain": relay, "limited": dataclasses.replace(relay, quota=quota)},
        faults=[FaultStatus("intake from the spools", "disk full", 2.0)],
        workers=[WorkerStatus(1, True, 42, "/q", 2), WorkerStatus(2, False, None, None, None)],
    )
    document = status.to_dict()
    assert "quota" not in document["relays"]["plain"]
    schemas = openapi()["components"]["schemas"]
    _validate(document, "QueueStatus", schemas)
    document["relays"]["plain"]["health"] = 3
    with pytest.raises(ValidationError):
        _validate(document, "QueueStatus", schemas)


def test_the_json_of_a_history_keeps_its_shape_and_matches_the_document(tmp_path: Path) -> None:
    """The JSON of a message's history, from a real store: the keys in their order, the
    values, and the document's schema for it."""
    store = SQLiteStore(tmp_path / "tracking.sqlite3")
    queue_id = "0190000000aaaaaaaaaaa"
    store.record(
        [
            Record(queue_id, Word.ACCEPTED, 1000.5, detail={"file": "x.eml", "spool": "/s"}),
            Record(
                queue_id,
                Word.QUEUED,
                1000.75,
                relay="main",
                sender="app@example.com",
                message_id="<m1@example.com>",
                recipients=("Bob@Example.net",),
                subject="Grüße",
                detail={"route": ["main"]},
            ),
            Record(queue_id, Word.BOUNCED, 1001.0, recipient="bob@example.net", reply="550 no"),
        ]
    )
    found = message(store, "m1@example.com")
    assert found is not None and history(store, queue_id) == [found]
    document = json.loads(json.dumps(found.to_dict()))
    store.close()
    assert document == {
        "id": queue_id,
        "message_id": "<m1@example.com>",
        "sender": "app@example.com",
        "subject": "Grüße",
        "not_a_message": None,
        "account": None,
        "status": "bounced",
        "created_at": 1000.5,
        "updated_at": 1001.0,
        "recipients": [
            {
                "address": "bob@example.net",
                "status": "bounced",
                "updated_at": 1001.0,
                "relay": None,
                "provider_id": None,
                "reply": "550 no",
            }
        ],
        "events": [
            {
                "seq": seq,
                "message": queue_id,
                "recipient": recipient,
                "status": status,
                "at": at,
                "source": "mqd",
                "relay": relay,
                "provider_id": None,
                "reply": reply,
                "detail": detail,
            }
            for seq, recipient, status, at, relay, reply, detail in (
                (1, None, "accepted", 1000.5, None, None, {"file": "x.eml", "spool": "/s"}),
                (2, None, "queued", 1000.75, "main", None, {"route": ["main"]}),
                (3, "bob@example.net", "bounced", 1001.0, None, "550 no", {}),
            )
        ],
    }
    assert list(document) == [f.name for f in dataclasses.fields(MessageHistory)]
    assert list(document["events"][0]) == [f.name for f in dataclasses.fields(TimelineEvent)]
    schemas = openapi()["components"]["schemas"]
    _validate(document, "MessageHistory", schemas)
    _validate({"messages": [document]}, "HistoryList", schemas)
    with pytest.raises(ValidationError):
        _validate(
            {**document, "events": [{**document["events"][0], "seq": "1"}]},
            "MessageHistory",
            schemas,
        )
