"""Options shared by several commands, and options built from settings declarations.

A settings class declares each setting once (:func:`spisonet._settings.setting`): its
spellings, help, unit and choices. :func:`setting_option` turns one declaration into a
typer option and :func:`settings_options` adds one per declared setting to a command, so
a new setting reaches ``--help`` without touching the command.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import typer

from .._settings import (
    SettingInfo,
    base_type,
    field_types,
    info,
    parse_int_list,
    setting_fields,
)

__all__ = [
    "ApixOption",
    "choice_parser",
    "int_list",
    "setting_option",
    "settings_options",
]

#: --apix of the commands that read maps: replaces the headers' voxel size when given
ApixOption = Annotated[
    float | None,
    typer.Option(
        "--apix",
        help="Voxel size (Å/voxel) to use when the map header has none; given, it "
        "replaces the voxel size of every input map's header.",
    ),
]


def int_list(text: str) -> tuple[int, ...]:
    """``"64,128,256"`` -> ``(64, 128, 256)`` (the parser of tuple settings)."""
    try:
        values = parse_int_list(text)
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise typer.BadParameter("expected at least one integer")
    return values


def choice_parser(choices: tuple[str, ...]) -> Callable[[str], str]:
    """A parser that accepts only ``choices`` (a clearer message than a Literal type's)."""

    def parse(text: str) -> str:
        if text not in choices:
            raise typer.BadParameter(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


def setting_option(
    cls: type, name: str, *, default: Any = None, panel: str | None = None
) -> inspect.Parameter:
    """The keyword parameter of a typer command that sets field ``name`` of ``cls``.

    Spellings, help (with unit) and choices come from the field's declaration. The option
    defaults to ``default`` (None: "not given", so the preset's value applies); a boolean
    setting becomes an on/off pair (``--filter-input/--no-filter-input``) whose default is
    None too, so a preset or settings file that turns it on can be overridden.
    """
    meta: SettingInfo = info(cls, name)
    kind = base_type(field_types(cls)[name])[0]
    extra: dict[str, Any] = {}
    decls: tuple[str, ...] = meta.cli
    if kind is bool:
        decls = tuple(f"{spelling}/--no-{spelling.removeprefix('--')}" for spelling in meta.cli)
    elif kind is tuple:  # typer would read a tuple as several values: parse "64,128,256"
        kind, extra = Any, {"parser": int_list, "metavar": "N,N,..."}
    elif meta.choices:
        extra = {"parser": choice_parser(meta.choices), "metavar": "|".join(meta.choices)}
    annotation = kind if default is not None else kind | None
    option = typer.Option(*decls, help=meta.help_with_unit, rich_help_panel=panel, **extra)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, option],
    )


def settings_options(
    cls: type,
    *,
    into: str = "overrides",
    defaults: Mapping[str, Any] | None = None,
    panel: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: one option per setting of ``cls`` that declares command-line spellings.

    The command receives their values as one dict, its keyword parameter ``into``:
    field name -> value, None where the option was not given (so the preset's value
    applies). ``defaults`` gives some options a default.
    """
    names = [f.name for f, meta in setting_fields(cls) if meta.cli]
    params = [setting_option(cls, n, default=(defaults or {}).get(n), panel=panel) for n in names]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != into]

        @functools.wraps(command)
        def with_settings(**kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in names}
            return command(**kwargs, **{into: values})

        # typer reads the parameters from __signature__ (inspect prefers it to the wrapped
        # command's) and their types from __annotations__
        with_settings.__signature__ = inspect.Signature([*own, *params])
        with_settings.__annotations__ = {p.name: p.annotation for p in [*own, *params]}
        return with_settings

    return decorate
