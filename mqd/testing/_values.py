"""Config values written in tests, made TOML-ready."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

__all__ = ["plain"]


def plain(value: Any) -> Any:
    """``value`` with paths as strings and tuples as lists, recursively (what TOML can hold)."""
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value
