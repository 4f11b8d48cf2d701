"""JSON Schemas (OpenAPI 3.1, JSON Schema 2020-12) generated from dataclasses.

The API's answers are dataclasses serialised with ``dataclasses.asdict`` (``mqd.admin.status``,
``mqd.tracking.answers``); their schemas are made here from the same classes' fields and
annotations, so that the document cannot drift from the answers. ``Components`` gathers them as
the document's ``components/schemas``:

- ``str``, ``int``, ``float``, ``bool``, ``None``: ``string``, ``integer``, ``number``,
  ``boolean``, ``null``; ``Any``: any value;
- a union (``X | None``): a ``type`` list when every member is one of those, else ``anyOf``;
- ``list[X]``, ``tuple[X, ...]``, ``Sequence[X]``: an array of X;
- ``dict[str, X]``, ``Mapping[str, X]``: an object of X values (``dict[str, Any]``: any object);
- ``Literal[...]``: an ``enum`` of its values;
- an ``Enum`` of strings, a dataclass: a component of its own (named by the class, or by the
  name ``Components`` is given for it), referred to by ``$ref``.

A dataclass is an object with a property per field, in field order; a field without a default
is required. Its docstring is the schema's description, a field's ``#:`` comments above it are
the property's; a field named for a Python keyword (``from_``) is the property without its
underscore (``from``). A dataclass that extends another is ``allOf`` the other and its own fields.
An annotation of any other kind raises ``TypeError`` naming the class and the field: a field
the generator cannot describe stops the document from being built, never goes undescribed.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import keyword
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Components", "field_docs"]

_SCALARS: dict[Any, str] = {
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}
_FIELD = re.compile(r"(\w+)\s*:")


class Components:
    """The schemas of dataclasses and enums, each once, under its name (``names[cls]`` or the
    class's own name). Two classes of one name raise ``ValueError``."""

    def __init__(self, names: Mapping[type, str] | None = None) -> None:
        self._names = dict(names or {})
        self._by_name: dict[str, type] = {}
        #: The schemas so far, by name: the document's ``components/schemas``.
        self.schemas: dict[str, dict[str, Any]] = {}

    def ref(self, cls: type) -> dict[str, Any]:
        """``{"$ref": ...}`` to ``cls``'s component, added (with those it refers to) if new."""
        name = self._names.get(cls, cls.__name__)
        known = self._by_name.get(name)
        if known is None:
            self._by_name[name] = cls
            self.schemas[name] = {}  # a placeholder: a class may refer to itself
            self.schemas[name] = self._component(cls)
        elif known is not cls:
            raise ValueError(
                f"two classes are both named {name!r} in the schemas: {_qualname(known)} and "
                f"{_qualname(cls)}; give one another name"
            )
        return {"$ref": f"#/components/schemas/{name}"}

    def schema(self, annotation: Any, where: str = "") -> dict[str, Any]:
        """The schema of a resolved annotation (``where`` names it in an error)."""
        if annotation is Any:
            return {}
        if annotation in _SCALARS:
            return {"type": _SCALARS[annotation]}
        if isinstance(annotation, type) and (
            dataclasses.is_dataclass(annotation) or issubclass(annotation, enum.Enum)
        ):
            return self.ref(annotation)
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is typing.Union or origin is types.UnionType:
            members = [self.schema(arg, where) for arg in args]
            if all(set(m) == {"type"} and isinstance(m["type"], str) for m in members):
                return {"type": [m["type"] for m in members]}
            return {"anyOf": members}
        if origin is typing.Literal:
            return {"enum": list(args)}
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": self.schema(args[0], where)}
        if origin in (list, Sequence) and len(args) == 1:
            return {"type": "array", "items": self.schema(args[0], where)}
        if origin in (dict, Mapping) and len(args) == 2 and args[0] is str:
            values = self.schema(args[1], where)
            return {"type": "object", **({"additionalProperties": values} if values else {})}
        raise TypeError(
            f"{where or 'an annotation'}: no JSON Schema for {annotation!r}; use str, int, float, "
            "bool, None, a union of them, list/tuple/dict[str, ...], Literal, an Enum or a "
            "dataclass (mqd.http.schema says how each maps)"
        )

    def _component(self, cls: type) -> dict[str, Any]:
        if issubclass(cls, enum.Enum):
            values = [member.value for member in cls]
            if not all(isinstance(value, str) for value in values):
                raise TypeError(f"{_qualname(cls)}: only an Enum of strings has a schema")
            return {"type": "string", **_described(cls), "enum": values}
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{_qualname(cls)} is neither a dataclass nor an Enum")
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        base = _dataclass_base(cls)
        inherited = {f.name for f in dataclasses.fields(base)} if base is not None else set()
        properties: dict[str, Any] = {}
        required: list[str] = []
        for f in dataclasses.fields(cls):
            if f.name in inherited:
                continue
            prop = self.schema(hints[f.name], f"{_qualname(cls)}.{f.name}")
            if f.name in docs:
                prop = {**prop, "description": docs[f.name]}
            name = _property_name(f.name)
            properties[name] = prop
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(name)
        own: dict[str, Any] = {"type": "object"}
        if required:
            own["required"] = required
        own["properties"] = properties
        if base is None:
            return {**_described(cls), **own}
        return {**_described(cls), "allOf": [self.ref(base), own]}


def _property_name(name: str) -> str:
    """A field's JSON name: a Python keyword's field (``from_``) without its underscore."""
    bare = name[:-1]
    return bare if name.endswith("_") and keyword.iskeyword(bare) else name


def _dataclass_base(cls: type) -> type | None:
    """The nearest dataclass ``cls`` extends, if any."""
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            return base
    return None


def _described(cls: type) -> dict[str, str]:
    """``{"description": ...}`` from the class's own docstring (not one dataclass made up)."""
    doc = cls.__dict__.get("__doc__")
    if not doc or doc.startswith(f"{cls.__name__}("):
        return {}
    return {"description": _markdown(inspect.cleandoc(doc))}


def _markdown(text: str) -> str:
    """A docstring's text for the document (CommonMark): double backquotes become single."""
    return text.replace("``", "`")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's ``#:`` comment lines (joined), as written above it in ``cls``'s source;
    none when the source cannot be read (an installation without it)."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    docs: dict[str, str] = {}
    comment: list[str] = []
    for line in lines:
        text = line.strip()
        if text.startswith("#:"):
            comment.append(text[2:].strip())
            continue
        found = _FIELD.match(text)
        if comment and found and found.group(1) in names:
            docs[found.group(1)] = _markdown(" ".join(comment))
        comment = []
    return docs


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
