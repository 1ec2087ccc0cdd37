"""The settings model: each setting is declared once, as a dataclass field with metadata.

A field declared with :func:`setting` carries its help text, unit, command-line spellings
and environment-variable name. From that one declaration:

- the CLI builds its options (:func:`spisonet.cli._options.setting_option`),
- the RELION hook reads its environment variables (:func:`from_environment`) and its
  settings file (:func:`from_table`, on the table a TOML reader made),
- ``reconstruct.json`` records the values (``dataclasses.asdict``),
- ``docs/settings.md`` is generated (:func:`markdown_table`; a test keeps it in step).

Pure Python: no torch, no files.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidValueError

__all__ = [
    "SettingInfo",
    "base_type",
    "field_types",
    "from_environment",
    "from_table",
    "info",
    "markdown_table",
    "parse_int_list",
    "parse_text",
    "setting",
    "setting_fields",
]

_KEY = "spisonet"


@dataclass(frozen=True)
class SettingInfo:
    """What a setting means, beside its name, type and default (which the field holds).

    Attributes
    ----------
    help : one sentence for ``--help`` and the docs.
    unit : e.g. ``"Å"``, ``"s"`` (empty: none).
    cli : the command-line spellings, documented one first (empty: no option).
    env : environment-variable suffix read as ``SPISONET_<env>`` or ``ISONET_<env>``
        (None: not read from the environment).
    choices : the allowed values of a text setting (empty: any).
    """

    help: str
    unit: str = ""
    cli: tuple[str, ...] = ()
    env: str | None = None
    choices: tuple[str, ...] = ()

    @property
    def help_with_unit(self) -> str:
        """The help text with the unit appended (for ``--help``)."""
        return f"{self.help} ({self.unit})" if self.unit else self.help


def setting(
    default: Any,
    help: str,
    *,
    unit: str = "",
    cli: tuple[str, ...] = (),
    env: str | None = None,
    choices: tuple[str, ...] = (),
    compare: bool = True,
) -> Any:
    """A dataclass field that carries its :class:`SettingInfo`."""
    meta = {_KEY: SettingInfo(help, unit, tuple(cli), env, tuple(choices))}
    if isinstance(default, list | dict | set):
        raise TypeError("settings defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata=meta, compare=compare)


def info(cls: type, name: str) -> SettingInfo:
    """The :class:`SettingInfo` of field ``name`` of settings class ``cls``."""
    for f in dataclasses.fields(cls):
        if f.name == name and _KEY in f.metadata:
            return f.metadata[_KEY]
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def setting_fields(cls: type) -> list[tuple[dataclasses.Field, SettingInfo]]:
    """The declared settings of ``cls`` (fields made with :func:`setting`), in order."""
    return [(f, f.metadata[_KEY]) for f in dataclasses.fields(cls) if _KEY in f.metadata]


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The evaluated annotations of a settings class (cached: once per class)."""
    return typing.get_type_hints(cls)


def base_type(annotation: Any) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) of an evaluated field annotation:
    ``float | None`` -> ``(float, True)``, ``tuple[int, ...]`` -> ``(tuple, False)``."""
    tp = annotation
    optional = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
    if typing.get_origin(tp) is tuple:
        return tuple, optional
    return tp, optional


def parse_int_list(text: str) -> tuple[int, ...]:
    """``"64, 128,256"`` -> ``(64, 128, 256)``; ValueError when an item is not an integer."""
    return tuple(int(v) for v in text.replace(" ", "").split(",") if v)


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def parse_text(raw: str, annotation: Any, where: str) -> Any:
    """A setting's value from text (an environment variable), by the field's type.

    ``where`` names the source in the error (e.g. ``"SPISONET_EPOCHS='x'"``). Booleans
    take 1/0, true/false, yes/no, on/off; ``none`` gives None where None is allowed;
    tuples are comma-separated integers.

    Raises
    ------
    InvalidValueError
        The text does not parse as the field's type.
    """
    tp, optional = base_type(annotation)
    text = raw.strip()
    if optional and text.lower() == "none":
        return None
    if tp is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise InvalidValueError(f"{where}: expected a boolean (1/0, true/false, yes/no)")
    if tp is int:
        try:
            value = float(text)
        except ValueError:
            raise InvalidValueError(f"{where}: expected an integer") from None
        if not math.isfinite(value) or value != int(value):
            raise InvalidValueError(f"{where}: expected an integer")
        return int(value)
    if tp is float:
        try:
            value = float(text)
        except ValueError:
            raise InvalidValueError(f"{where}: expected a number") from None
        if not math.isfinite(value):
            raise InvalidValueError(f"{where}: expected a finite number")
        return value
    if tp is tuple:
        try:
            return parse_int_list(text)
        except ValueError:
            raise InvalidValueError(f"{where}: expected comma-separated integers") from None
    return text


def from_environment(
    cls: type,
    environ: Mapping[str, str],
    prefixes: tuple[str, ...] = ("SPISONET_", "ISONET_"),
) -> tuple[dict[str, Any], dict[str, str]]:
    """Values of ``cls``'s settings that have an ``env`` name, read from ``environ``.

    For each such setting the first prefix whose variable is set and not blank wins.
    Returns ``(values by field name, variable name by field name)``.

    Raises
    ------
    InvalidValueError
        A value that does not parse (the variable and its value are in the message), or a
        text setting outside its ``choices``.
    """
    hints = field_types(cls)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f, meta in setting_fields(cls):
        if meta.env is None:
            continue
        for prefix in prefixes:
            name = prefix + meta.env
            raw = environ.get(name)
            if raw is None or raw.strip() == "":
                continue
            value = parse_text(raw, hints[f.name], f"{name}={raw!r}")
            if meta.choices and value is not None and value not in meta.choices:
                raise InvalidValueError(
                    f"{name}={raw!r}: expected one of {', '.join(meta.choices)}"
                )
            values[f.name] = value
            sources[f.name] = name
            break
    return values, sources


def _kind(value: Any) -> str:
    """What a TOML value is, in words (for an error's "found ...")."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"  # dates and times


def _typed(raw: Any, annotation: Any, where: str) -> Any:
    """A TOML value checked against a field's type (no conversion from text: a TOML file
    has types of its own, so ``epochs = "5"`` is a mistake worth naming)."""
    tp, _ = base_type(annotation)

    def wrong(expected: str) -> InvalidValueError:
        return InvalidValueError(f"{where}={raw!r}: expected {expected}, found {_kind(raw)}")

    if tp is bool:
        if not isinstance(raw, bool):
            raise wrong("a boolean (true or false)")
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise wrong("an integer")
        return raw
    if tp is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise wrong("a number")
        if not math.isfinite(raw):
            raise InvalidValueError(f"{where}={raw!r}: expected a finite number")
        return float(raw)
    if tp is tuple:
        if not isinstance(raw, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in raw
        ):
            raise wrong("an array of integers")
        return tuple(raw)
    if not isinstance(raw, str):
        raise wrong("a string")
    return raw


def from_table(
    cls: type, table: Mapping[str, Any], where: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """Values of ``cls``'s settings from a settings file's table (keys: field names).

    ``where`` names the file in the errors and the sources (e.g. ``"relion.toml"``).
    Returns ``(values by field name, "<where>:<key>" by field name)``.

    Raises
    ------
    InvalidValueError
        A key that is not a setting (the closest setting's name is suggested), a value
        of the wrong type, or a text setting outside its ``choices``; the message names
        the file, the key, what was expected and what was found.
    """
    hints = field_types(cls)
    declared = {f.name: meta for f, meta in setting_fields(cls)}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, raw in table.items():
        if key not in declared:
            raise InvalidValueError(f"{where}: unknown setting {key!r}; {_suggest(key, declared)}")
        place = f"{where}:{key}"
        value = _typed(raw, hints[key], place)
        choices = declared[key].choices
        if choices and value not in choices:
            raise InvalidValueError(f"{place}={raw!r}: expected one of {', '.join(choices)}")
        values[key] = value
        sources[key] = place
    return values, sources


def _suggest(key: str, names: Mapping[str, Any]) -> str:
    """ "did you mean 'x'?" for a mistyped setting name, else the list of names."""
    import difflib

    plain = key.strip().lower().replace("-", "_")
    for prefix in ("spisonet_", "isonet_"):  # a variable's name pasted as a key
        plain = plain.removeprefix(prefix)
    close = [plain] if plain in names else difflib.get_close_matches(plain, list(names), n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"the settings are {', '.join(names)}"


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


_BAR = " \\| "  # a "|" inside a Markdown table cell


def markdown_table(cls: type, *, defaults: Mapping[str, Any] | None = None) -> str:
    """A Markdown table of ``cls``'s settings: name, option, variable, default, unit, help.

    ``defaults`` replaces the field defaults in the table (e.g. a preset's values).
    """
    rows = [
        "| setting | option | variable | default | unit | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for f, meta in setting_fields(cls):
        default = (defaults or {}).get(f.name, f.default)
        option = f"`{meta.cli[0]}`" if meta.cli else ""
        env = f"`SPISONET_{meta.env}`" if meta.env else ""
        text = meta.help + (f" ({_BAR.join(meta.choices)})" if meta.choices else "")
        rows.append(f"| `{f.name}` | {option} | {env} | {_show(default)} | {meta.unit} | {text} |")
    return "\n".join(rows) + "\n"
