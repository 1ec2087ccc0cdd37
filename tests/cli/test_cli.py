"""The command line as a whole (spisonet/cli/_app.py and the package): help that reads
like a Unix tool's, the commands in order, ``--version``, ``python -m spisonet``, user
errors as one line with exit code 2, and no torch for ``--help``.

Each command has its own test module, tests/cli/test_cli_<command>.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import one_error_line, run_module, simulated_maps
from typer.main import get_command
from typer.testing import CliRunner

from spisonet import __version__
from spisonet.cli import app

runner = CliRunner()

#: every command, in the order of ``spisonet --help``, and the hidden aliases
COMMANDS = [
    "fsc3d",
    "simulate",
    "demo",
    "reconstruct",
    "anisotropy",
    "fsd3d",
    "whitening",
    "combine-map",
    "relion-reconstruct",
    "relion-check",
    "tomo",
]
ALIASES = ["combine_map", "relion_reconstruct", "relion_check"]


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> dict[str, Path]:
    return simulated_maps(tmp_path_factory.mktemp("maps"))


def _visible_commands() -> list[str]:
    return [name for name, cmd in get_command(app).commands.items() if not cmd.hidden]


# --------------------------------------------------------------------------- help
def test_commands_and_aliases_in_help_order() -> None:
    group = get_command(app)
    assert _visible_commands() == COMMANDS
    assert all(group.commands[a].hidden for a in ALIASES)
    text = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    listed = [c for c in COMMANDS if re.search(rf"│ {c}\s", text)]
    assert listed == COMMANDS
    assert not any(re.search(rf"│ {a}\s", text) for a in ALIASES)  # work, but not listed


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_no_typer_oddities(command) -> None:
    args = ["--help"] if command is None else [command, "--help"]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.output
    usage = next(ln for ln in text.splitlines() if "Usage:" in ln)
    assert "{" not in usage and "[[" not in usage, usage
    assert "<bool>" not in text
    assert not re.search(r"--o(?![\w-])", text)  # --o works, but --output is enough


def test_usage_lines_read_like_a_unix_tool() -> None:
    def usage(*args) -> str:
        out = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"}).output
        return " ".join(next(ln for ln in out.splitlines() if "Usage:" in ln).split())

    assert usage("fsc3d").endswith("fsc3d [OPTIONS] HALF1 HALF2 [MASK]")
    assert usage("reconstruct").endswith("reconstruct [OPTIONS] HALF1 [HALF2]")
    assert usage("combine-map").endswith(
        "combine-map [OPTIONS] LOW_MAP HIGH_MAP OUT_MAP THRESHOLD_RES"
    )


def test_version_and_python_dash_m(tmp_path) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"spisonet {__version__}"
    proc = run_module("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"spisonet {__version__}"


def test_help_does_not_import_torch() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, spisonet.cli; sys.exit('torch' in sys.modules)"],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom spisonet.cli import main\nsys.argv = ['spisonet', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "anisotropy" in proc.stdout and "fsd3d" in proc.stdout


# --------------------------------------------------------------------------- errors
def test_missing_map_exits_2_naming_the_file(maps, tmp_path) -> None:
    proc = run_module("anisotropy", "nothere_half1.mrc", maps["half2"], cwd=tmp_path)
    one_error_line(proc, "nothere_half1.mrc")


def test_mismatched_maps_exit_2_naming_the_file(maps, tmp_path) -> None:
    proc = run_module("combine-map", maps["half1"], maps["small"], "o.mrc", 8, cwd=tmp_path)
    one_error_line(proc, "small.mrc")
    assert not (tmp_path / "o.mrc").exists()


def test_star_without_angles_exits_2_naming_the_file(tmp_path) -> None:
    star = tmp_path / "noangles.star"
    star.write_text("\ndata_particles\n\nloop_\n_rlnImageName #1\n000001@p.mrcs\n")
    proc = run_module("fsd3d", star, "--box", 16, "--apix", 1.0, cwd=tmp_path)
    one_error_line(proc, "noangles.star")


def test_bad_value_exits_2(maps, tmp_path) -> None:
    proc = run_module(
        "whitening", maps["gt"], "-o", "w.mrc", "--low-res", 3, "--high-res", 10, cwd=tmp_path
    )
    one_error_line(proc, "low_res")


def test_error_message_is_printed_as_text_not_markup(monkeypatch, capsys) -> None:
    """A message with brackets (a list, a range) reaches the user as written."""
    import spisonet.cli._app as cli_app
    from spisonet.cli import main
    from spisonet.errors import InvalidValueError

    def fail() -> None:
        raise InvalidValueError("mask values must be in [0, 1]; got [bold]")

    monkeypatch.setattr(cli_app, "app", fail)
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    assert "mask values must be in [0, 1]; got [bold]" in capsys.readouterr().err
