"""``spisonet relion-check`` (also ``relion_check``): is a RELION set-up ready for a long
run? Prints :func:`spisonet.relion.check_relion_setup`'s report (docs/relion.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ._app import app, make_console

if TYPE_CHECKING:
    from ..relion.check import GateRow, RelionSetupReport

__all__ = ["relion_check_command"]

#: The gate table's words for :func:`spisonet.relion.check.closed_gates`' reasons.
_SHORT = {
    "healpix order below start": "healpix order",
    "resolution not better than start": "resolution",
}
_MARK = {"ok": "[green]✓[/green]", "note": "[yellow]![/yellow]", "problem": "[red]✗[/red]"}


@app.command("relion-check")
@app.command("relion_check", hidden=True)
def relion_check_command(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Settings file to check (TOML, as given to spisonet-relion --config); "
            "default: the one RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE names, if any.",
            metavar="TOML",
        ),
    ] = None,
    star: Annotated[
        Path | None,
        typer.Option(
            "--star",
            help="A run's *_external_reconstruct.star: its gates as the correction sees them.",
            metavar="STAR",
        ),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            "--run-dir",
            "--run_dir",
            help="A run's folder (its *_sampling.star, *_model.star, *_optimiser.star).",
            metavar="DIR",
        ),
    ] = None,
) -> None:
    """Check a RELION set-up for spisonet-relion before a long run.

    Reports the settings (settings file and SPISONET_*/ISONET_* variables, with where each
    value comes from), the executable RELION will run, the device and preset, and for a
    run the mask and the iteration from which the network would start. Run it from
    RELION's project folder, in the environment RELION will run in. Exit code 0 when all
    is well, 2 when something would fail.
    """
    if star is not None and run_dir is not None:
        raise typer.BadParameter("give --star or --run-dir, not both")
    # the RELION side (and, to find the device, torch) only for this command
    from ..relion.check import check_relion_setup

    report = check_relion_setup(config, star=star, run_dir=run_dir)
    _print(report)
    if not report.ok:
        raise typer.Exit(2)


def _print(report: RelionSetupReport) -> None:
    """The report: settings table, one line per finding, the gates, a verdict."""
    from ..relion.settings import settings_rows

    console = make_console()
    if report.settings is not None:
        table = Table(title="spisonet-relion settings", title_justify="left")
        for column in ("setting", "value", "from"):
            table.add_column(column)
        for name, value, source in settings_rows(report.settings):
            style = "dim" if source == "default" else ""
            table.add_row(name, escape(value), escape(source), style=style)
        console.print(table)
    for f in report.findings:
        console.print(f"{_MARK[f.level]} {f.topic}: {escape(f.text)}")
    if report.gates:
        console.print(_gates_table(report.run, report.gates))
    problems = sum(f.level == "problem" for f in report.findings)
    if problems:
        console.print(f"[red]{problems} problem(s): fix them before starting RELION[/red]")
    else:
        console.print("[green]ready[/green]")


def _gates_table(run: str, rows: tuple[GateRow, ...]) -> Table:
    """The iterations where the healpix order or the gates change, and the last one."""
    table = Table(title=f"gates of {escape(run)}", title_justify="left")
    for column in ("iteration", "healpix order", "resolution (Å)", "network"):
        table.add_column(column)
    previous = None
    for i, row in enumerate(rows):
        state = (row.healpix_order, row.open)
        if state != previous or i == len(rows) - 1:
            order = "?" if row.healpix_order is None else str(row.healpix_order)
            res = "?" if row.resolution is None else f"{row.resolution:.2f}"
            network = (
                "runs" if row.open else "closed: " + ", ".join(_SHORT.get(c, c) for c in row.closed)
            )
            table.add_row(str(row.iteration), order, res, network)
        previous = state
    return table
