"""``--gpus`` / ``--processes`` (spisonet/cli/launch.py): the command line the ranks run
again, and the values refused before any rank starts. The multi-process runs themselves
are in tests/nn/test_nn_distributed.py."""

from __future__ import annotations

import pytest
from helpers import write_noisy_pair
from typer.testing import CliRunner

from spisonet.cli import app
from spisonet.cli.launch import argv_without
from spisonet.errors import InvalidValueError


def test_argv_without_drops_options_and_values():
    argv = ["reconstruct", "a.mrc", "--gpus", "0,1", "--epochs", "2", "--processes=2"]
    assert argv_without(argv, ("--gpus", "--processes")) == [
        "reconstruct",
        "a.mrc",
        "--epochs",
        "2",
    ]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--gpus", "0,x"], "--gpus must be a comma-separated list of GPU numbers, got '0,x'"),
        (["--gpus", ","], "--gpus is empty"),
        (["--processes", "-2"], "--processes must be ≥ 1, got -2"),
    ],
)
def test_bad_launch_values_are_refused_before_any_rank(tmp_path, option, message):
    paths = write_noisy_pair(tmp_path, 16, 2.0)
    out = tmp_path / "o"
    args = ["reconstruct", str(paths["h1"]), "--preset", "tiny", "-o", str(out), *option]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, InvalidValueError), result.output
    assert str(result.exception) == message
    assert not out.exists()
