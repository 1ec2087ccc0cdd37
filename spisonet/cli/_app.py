"""The ``spisonet`` typer app: help that reads like a Unix tool's, ``--version``, and
:func:`main`, which turns user errors into one red line and exit code 2.

The commands live one per module beside this one and register themselves on :data:`app`
when ``spisonet.cli`` imports them.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from .._version import __version__
from ..errors import SpisonetError

__all__ = ["app", "main", "make_console"]

#: Option names still accepted (the public tool's ``--o``) but left out of ``--help``.
_HIDDEN_ALIASES = frozenset({"--o"})


def _tidy_help(command) -> None:
    """What ``--help`` shows: flags without a value type (typer prints ``<bool>``),
    arguments as ``NAME`` / ``[NAME]`` (typer prints ``{name}``), no hidden aliases, and
    the docstring's paragraphs unwrapped (rich keeps a docstring's line breaks, which
    breaks its own wrapping at the terminal's width)."""
    if command.help:
        paragraphs = command.help.strip().split("\n\n")
        command.help = "\n\n".join(" ".join(par.split()) for par in paragraphs)
    for p in command.params:
        if isinstance(p, TyperOption):
            if p.is_flag:
                p.metavar = ""
            hidden = [o for o in p.opts if o in _HIDDEN_ALIASES]
            if hidden and len(hidden) < len(p.opts) and not p.is_flag:
                p.opts = [o for o in p.opts if o not in hidden]
                p._hidden_opts = hidden  # parsed by _Command.make_parser
        elif isinstance(p, TyperArgument):
            p.metavar = (p.metavar or p.name or "").strip("[]").upper()


def _quiet_help_option(option):
    if option is not None:
        option.metavar = ""
    return option


class _Command(TyperCommand):
    """A typer command whose help and usage read like a Unix tool's."""

    def make_parser(self, ctx):
        parser = super().make_parser(ctx)
        for p in self.get_params(ctx):
            hidden = getattr(p, "_hidden_opts", None)
            if hidden:
                parser.add_option(obj=p, opts=hidden, dest=p.name, action="store", nargs=p.nargs)
        return parser

    def get_help_option(self, ctx):
        return _quiet_help_option(super().get_help_option(ctx))

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                name = p.metavar or (p.name or "").upper()
                pieces.append(name if p.required else f"[{name}]")
        return pieces


class _Group(TyperGroup):
    """The ``spisonet`` group: every command becomes a :class:`_Command`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _tidy_help(self)
        for command in self.commands.values():
            if type(command) is TyperCommand:
                command.__class__ = _Command
            _tidy_help(command)

    def get_help_option(self, ctx):
        return _quiet_help_option(super().get_help_option(ctx))


app = typer.Typer(
    name="spisonet",
    help="Correct preferred-orientation anisotropy in cryo-EM maps (self-supervised).",
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def make_console(*, quiet: bool = False) -> Console:
    """The console a command prints to; ``quiet`` prints nothing (ranks other than 0)."""
    return Console(quiet=True) if quiet else Console(highlight=False)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"spisonet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """spisonet: measure and correct preferred-orientation anisotropy in cryo-EM maps."""


def main() -> None:
    """Console-script entry point: user errors become one red line and exit code 2."""
    try:
        app()
    except SpisonetError as exc:
        # escaped: a message may hold brackets ("[0, 1]") that rich would read as markup
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"[bold red]error:[/bold red] {escape(str(exc))}"
        )
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
