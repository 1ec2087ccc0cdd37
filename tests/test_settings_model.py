"""The settings model (spisonet._settings) and the correction's settings declared with it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

from spisonet._settings import (
    from_environment,
    info,
    markdown_table,
    parse_text,
    setting,
    setting_fields,
)
from spisonet.correction.settings import (
    PRESETS,
    CorrectionSettings,
    preset_settings,
    resolve_preset,
    settings_markdown,
)
from spisonet.errors import InvalidValueError
from spisonet.progress import fraction, relabel, report

DOCS = Path(__file__).resolve().parents[1] / "docs"


@dataclass(frozen=True)
class _Example:
    count: int = setting(3, "how many", unit="items", cli=("--count",), env="COUNT")
    scale: float | None = setting(None, "a scale", unit="Å", env="SCALE")
    on: bool = setting(False, "a switch", env="ON")
    sizes: tuple[int, ...] = setting((1, 2), "sizes", env="SIZES")
    mode: str = setting("a", "a mode", env="MODE", choices=("a", "b"))
    plain: int = 0  # not a declared setting


def test_declarations_are_read_back():
    names = [f.name for f, _ in setting_fields(_Example)]
    assert names == ["count", "scale", "on", "sizes", "mode"]
    meta = info(_Example, "count")
    assert meta.cli == ("--count",) and meta.help_with_unit == "how many (items)"
    with pytest.raises(KeyError):
        info(_Example, "plain")


def test_environment_values_by_type_and_prefix_order():
    env = {
        "ISONET_COUNT": "7",
        "SPISONET_COUNT": "8",  # SPISONET_ wins over ISONET_
        "ISONET_SCALE": "none",
        "SPISONET_ON": "yes",
        "SPISONET_SIZES": "4, 8,16",
        "SPISONET_MODE": " ",  # blank: unset
    }
    values, sources = from_environment(_Example, env)
    assert values == {"count": 8, "scale": None, "on": True, "sizes": (4, 8, 16)}
    assert sources["count"] == "SPISONET_COUNT" and sources["scale"] == "ISONET_SCALE"
    assert _Example(**values).count == 8


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SPISONET_COUNT": "2.5"}, r"SPISONET_COUNT='2.5': expected an integer"),
        ({"SPISONET_COUNT": "x"}, "expected an integer"),
        ({"ISONET_SCALE": "inf"}, r"ISONET_SCALE='inf': expected a finite number"),
        ({"SPISONET_ON": "maybe"}, "expected a boolean"),
        ({"SPISONET_SIZES": "1,a"}, "comma-separated integers"),
        ({"SPISONET_MODE": "c"}, r"SPISONET_MODE='c': expected one of a, b"),
    ],
)
def test_environment_errors_name_the_variable(env, message):
    with pytest.raises(InvalidValueError, match=message):
        from_environment(_Example, env)


def test_parse_text_integers_accept_whole_floats_only():
    assert parse_text("3.0", int, "x") == 3
    assert parse_text(" 1e2 ", float, "x") == 100.0
    with pytest.raises(InvalidValueError):
        parse_text("none", int, "x")  # None only where the type allows it


def test_markdown_table_lists_every_declared_setting():
    table = markdown_table(_Example)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 5
    assert "| `count` | `--count` | `SPISONET_COUNT` | 3 | items | how many |" in lines
    assert "(a \\| b)" in table  # choices, with the bar escaped inside a table cell


def test_every_correction_field_is_a_declared_setting_with_an_option():
    declared = {f.name: meta for f, meta in setting_fields(CorrectionSettings)}
    assert set(declared) == {f.name for f in dataclasses.fields(CorrectionSettings)}
    assert all(meta.cli and meta.help for meta in declared.values())
    spellings = [s for meta in declared.values() for s in meta.cli]
    assert len(spellings) == len(set(spellings))


def test_train_settings_take_every_shared_field_by_name():
    from spisonet.nn.train import TrainSettings

    shared = {f.name for f in dataclasses.fields(TrainSettings)} & {
        f.name for f in dataclasses.fields(CorrectionSettings)
    }
    assert {"widths", "epochs", "learning_rate", "amp", "device"} <= shared
    changed = {
        "widths": (8, 16),
        "epochs": 3,
        "batch_size": 6,
        "acc_batches": 3,
        "learning_rate": 0.01,
        "alpha": 0.25,
        "beta": 0.75,
        "self_weight": 0.5,
        "consistency_border": 3,
        "consistency_residual": "low",
        "equivariance_weight": "measured",
        "schedule": "onecycle",
        "amp": "off",
        "compile": True,
        "seed": 9,
        "device": "cpu",
    }
    assert set(changed) == shared  # a new shared field must be added to this test
    s = dataclasses.replace(PRESETS["tiny"], **changed, cube_size=16, predict_crop_size=24)
    ts = s.train_settings()
    assert {k: getattr(ts, k) for k in shared} == changed


def test_resolve_preset_is_the_one_place_for_auto():
    assert resolve_preset("auto", cuda_available=True) == ("gpu", "a CUDA GPU is present")
    assert resolve_preset("auto", cuda_available=False) == ("cpu", "no CUDA GPU found")
    assert resolve_preset("tiny") == ("tiny", "")
    assert preset_settings("auto").preset in ("gpu", "cpu")
    assert preset_settings("tiny", widths=[4, 8]).widths == (4, 8)


def test_docs_settings_page_is_in_step():
    """Regenerate with: python -m spisonet.correction > docs/settings.md"""
    assert (DOCS / "settings.md").read_text() == settings_markdown()


def test_progress_helpers():
    calls = []
    report(lambda *a: calls.append(a), "fsc3d", 1, 4)
    report(None, "fsc3d", 1, 4)  # no callback: nothing happens
    relabel(lambda *a: calls.append(a), "train half 2")("train", 2, 8, "info")
    assert calls == [("fsc3d", 1, 4, None), ("train half 2", 2, 8, "info")]
    assert relabel(None, "x") is None
    assert fraction(3, 4) == 0.75 and fraction(5, 4) == 1.0 and fraction(0, 0) == 1.0
