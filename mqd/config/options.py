"""Typed reading of one TOML table, for the core config and for relay plugins alike.

Every getter records the effective value (defaults included, secrets redacted) so that
``mqd config check`` can print what mqd will really use; ``finish()`` turns any key nobody read
into a ``ConfigError`` that names the key, the table and the file, with a suggestion.
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mqd.config.units import format_duration, parse_duration, parse_size
from mqd.errors import ConfigError

__all__ = ["REDACTED", "Options", "Secret"]

REDACTED = "********"
T = TypeVar("T")
_MISSING: Any = object()


class Secret:
    """A credential that never shows itself in a repr, a log line or ``config check``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Options:
    """The keys of one table (``section`` is its dotted name, e.g. ``relays.main``)."""

    def __init__(
        self,
        table: Mapping[str, Any],
        *,
        section: str,
        path: Path | None,
        problems: list[ConfigError] | None = None,
    ) -> None:
        self._table = dict(table)
        self.section = section
        self.file = path
        #: Where problems are gathered so that all of them are reported at once (None: the first
        #: raises). Sub-tables share their parent's.
        self.problems = problems
        self._effective: dict[str, Any] = {}
        self._known: set[str] = set()

    # -- errors -------------------------------------------------------------------------------

    def error(self, key: str, message: str) -> ConfigError:
        """A ConfigError about ``key`` of this table, naming the file."""
        dotted = f"{self.section}.{key}" if self.section else key
        return ConfigError(message, path=self.file, key=dotted)

    def report(self, error: ConfigError) -> None:
        """A problem that need not stop the reading: gathered with the others, or raised when
        problems are not gathered."""
        if self.problems is None:
            raise error
        self.problems.append(error)

    def attempt(self, parse: Callable[[], T], fallback: Callable[[], T]) -> T:
        """``parse()``; when problems are gathered, a ConfigError it raises is gathered and
        ``fallback()`` stands in, so that the problems after it are found too."""
        if self.problems is None:
            return parse()
        try:
            return parse()
        except ConfigError as exc:
            self.problems.append(exc)
            return fallback()

    def finish(self) -> None:
        """Report each key that no getter asked for."""
        for key in self._table:
            if key not in self._known:
                hint = difflib.get_close_matches(key, sorted(self._known), n=1)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
                known = ", ".join(sorted(self._known)) or "none"
                self.report(self.error(key, f"unknown key{suggestion} (known keys here: {known})"))

    def keys(self) -> list[str]:
        """The keys present in this table (reading them is still up to the caller)."""
        return list(self._table)

    def raw(self, key: str, default: Any = None) -> Any:
        """The unconverted value of ``key`` (marks it as known)."""
        self._known.add(key)
        return self._table.get(key, default)

    def effective(self) -> dict[str, Any]:
        """What was read, defaults filled in and secrets redacted, in TOML-ready types
        (sub-tables included)."""
        return {k: dict(v) if isinstance(v, dict) else v for k, v in self._effective.items()}

    # -- getters ------------------------------------------------------------------------------

    def _get(self, key: str, default: Any, convert: Callable[[Any], T], shown: Any = None) -> T:
        self._known.add(key)
        raw = self._table.get(key, default)
        if raw is _MISSING:
            unknown = [k for k in self._table if k not in self._known]
            hint = difflib.get_close_matches(key, unknown, n=1)
            spelled = f" (is '{hint[0]}' a misspelling of it?)" if hint else ""
            raise self.error(key, f"is required{spelled}")
        if raw is None:
            return None  # type: ignore[return-value]
        try:
            value = convert(raw)
        except (TypeError, ValueError) as exc:
            if default is _MISSING or default is None:
                raise self.error(key, str(exc)) from None
            # A bad value with a default: gathered, and the default read on in its place.
            self.report(self.error(key, str(exc)))
            value = convert(default)
        self._effective[key] = shown(value) if shown else value
        return value

    def string(self, key: str, default: Any = _MISSING) -> Any:
        """A string (``default=None`` makes it optional and returns None when absent)."""
        return self._get(key, default, _expect(str, "a string"))

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int | None = None) -> Any:
        def convert(raw: Any) -> int:
            value = _expect(int, "an integer")(raw)
            if minimum is not None and value < minimum:
                raise ValueError(f"must be at least {minimum}, got {value}")
            return value

        return self._get(key, default, convert)

    def count(self, key: str, default: Any, *, auto: Callable[[], int], minimum: int = 1) -> Any:
        """An integer of at least ``minimum``, or ``"auto"`` for what ``auto()`` says."""

        def convert(raw: Any) -> int:
            if raw == "auto":
                return auto()
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ValueError(f'expected an integer or "auto", got {raw!r}')
            if raw < minimum:
                raise ValueError(f"must be at least {minimum}, got {raw}")
            return raw

        return self._get(key, default, convert)

    def number(self, key: str, default: Any = _MISSING) -> Any:
        """A number (integer or float), returned as a float."""

        def convert(raw: Any) -> float:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ValueError(f"expected a number, got {raw!r}")
            return float(raw)

        return self._get(key, default, convert)

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, default, _expect(bool, "true or false"))

    def duration(self, key: str, default: Any = _MISSING) -> Any:
        """Seconds, from "30s" / "5m" / a number; shown back in the same units."""
        return self._get(key, default, parse_duration, shown=format_duration)

    def size(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, default, parse_size)

    def choice(self, key: str, choices: tuple[str, ...], default: Any = _MISSING) -> Any:
        def convert(raw: Any) -> str:
            value = _expect(str, "a string")(raw)
            if value not in choices:
                raise ValueError(
                    f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}"
                )
            return value

        return self._get(key, default, convert)

    def string_list(self, key: str, default: Any = _MISSING) -> Any:
        def convert(raw: Any) -> tuple[str, ...]:
            if isinstance(raw, str) or not isinstance(raw, list | tuple):
                raise ValueError(f"expected a list of strings, got {raw!r}")
            for item in raw:
                if not isinstance(item, str):
                    raise ValueError(f"expected a list of strings, got the item {item!r}")
            return tuple(raw)

        return self._get(key, default, convert, shown=list)

    def filepath(self, key: str, default: Any = _MISSING) -> Any:
        """A path; a relative one is taken relative to the config file's directory."""

        def convert(raw: Any) -> Path:
            value = Path(os.path.expanduser(_expect(str, "a path")(raw)))
            if not value.is_absolute() and self.file is not None:
                value = self.file.parent / value
            return value

        return self._get(key, default, convert, shown=str)

    def table(self, key: str) -> Options:
        """A sub-table as its own Options (an absent key reads as an empty table)."""
        self._known.add(key)
        raw = self._table.get(key, {})
        if not isinstance(raw, Mapping):
            raise self.error(key, f"expected a table, got {raw!r}")
        sub = Options(
            raw,
            section=f"{self.section}.{key}" if self.section else key,
            path=self.file,
            problems=self.problems,
        )
        if key in self._table:  # shown nested, as read (``effective()`` copies it then)
            self._effective[key] = sub._effective
        return sub

    def secret(self, name: str, *, required: bool = False) -> Secret | None:
        """A credential given as exactly one of ``<name>_file``, ``<name>_env`` or ``<name>``.

        ``<name>_file`` is read once, trailing newline removed, and refused when others may
        read or write it (its group may read it: that is how a service's group shares it). An
        inline ``<name>`` is accepted only when the config file is not readable by group or
        others (like ssh's key check).
        """
        file_key, env_key = f"{name}_file", f"{name}_env"
        given = [k for k in (file_key, env_key, name) if k in self._table]
        self._known.update((file_key, env_key, name))
        if len(given) > 1:
            raise self.error(given[1], f"give only one of {file_key}, {env_key} or {name}")
        if not given:
            if required:
                raise self.error(file_key, f"is required (or {env_key}, or an inline {name})")
            return None
        key = given[0]
        if key == file_key:
            secret_path: Path = self.filepath(file_key)
            try:
                value = secret_path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise self.error(
                    file_key, f"cannot read {secret_path}: {exc.strerror or exc}"
                ) from None
            self._check_secret_file(file_key, secret_path)
            self._effective[file_key] = str(secret_path)
        elif key == env_key:
            variable = self.string(env_key)
            if variable not in os.environ:
                raise self.error(env_key, f"the environment variable {variable} is not set")
            value = os.environ[variable]
        else:
            self._check_private_file(name)
            value = _expect(str, "a string")(self._table[name])
            self._effective[name] = REDACTED
        if not value:
            raise self.error(key, "the secret is empty")
        return Secret(value)

    def _check_secret_file(self, key: str, path: Path) -> None:
        """A secret file others may read (or write) is refused, as msmtp and ssh do."""
        if os.name != "posix":
            return
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o006:
            raise self.error(
                key,
                f"permissions {mode:04o} for '{path}' are too open: a secret file must not be "
                f"readable or writable by others. Run 'chmod 600 {path}' (or 640 to let the "
                "daemon's group read it).",
            )

    def _check_private_file(self, key: str) -> None:
        if self.file is None or os.name != "posix":
            return
        mode = stat.S_IMODE(self.file.stat().st_mode)
        if mode & 0o077:
            raise self.error(
                key,
                f"permissions {mode:04o} for '{self.file}' are too open: a config file holding "
                f"an inline {key} must not be readable by group or others. "
                f"Run 'chmod 600 {self.file}', or move the secret to {key}_file / {key}_env.",
            )


def _expect(kind: type[T], what: str) -> Callable[[Any], T]:
    def convert(raw: Any) -> T:
        # bool is an int in Python but never a valid integer here, and vice versa.
        if isinstance(raw, kind) and (kind is bool or not isinstance(raw, bool)):
            return raw
        raise ValueError(f"expected {what}, got {raw!r}")

    return convert
