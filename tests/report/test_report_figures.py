"""Tests of spisonet.report's figures: the resolution figures (anisotropy report, FSC
curves) and the correction run's loss figure, written as PNG without pyplot."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from spisonet.anisotropy import analyse_anisotropy
from spisonet.fsc_shells import fsc
from spisonet.report import anisotropy_figure, fsc_figure, loss_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pair(n: int, missing_cone_deg: float = 0.0, seed: int = 0):
    """Half maps: a smooth shared signal (optionally with a missing cone along z) + noise."""
    rng = np.random.default_rng(seed)
    f = np.fft.rfftn(rng.normal(size=(n, n, n)))
    kz = np.fft.fftfreq(n, 1.0 / n)[:, None, None]
    ky = np.fft.fftfreq(n, 1.0 / n)[None, :, None]
    kx = np.arange(n // 2 + 1)[None, None, :]
    r = np.sqrt(kx**2 + ky**2 + kz**2)
    env = 30.0 * np.exp(-(r**2) / (2 * (0.13 * n) ** 2))
    if missing_cone_deg:
        cos = np.abs(kz) / np.where(r == 0, 1.0, r)
        env = env * ~((cos > math.cos(math.radians(missing_cone_deg))) & (r > 4))
    s = np.fft.irfftn(f * env, s=(n, n, n), axes=(0, 1, 2))
    return (s + rng.normal(size=s.shape)).astype(np.float32), (s + rng.normal(size=s.shape)).astype(
        np.float32
    )


def png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG header."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def no_temp_files(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def reports():
    return {
        "uniform": analyse_anisotropy(*pair(40), voxel_size=1.2, n_directions=300),
        "top": analyse_anisotropy(*pair(40, 60.0, seed=1), voxel_size=1.2, n_directions=300),
    }


@pytest.mark.parametrize("case", ["uniform", "top"])
def test_anisotropy_figure_writes_png_without_pyplot_state(tmp_path, reports, case):
    had_pyplot = "matplotlib.pyplot" in sys.modules
    out = tmp_path / f"{case}_report.png"
    anisotropy_figure(reports[case], out)
    w, h = png_size(out)
    assert (w, h) == (1800, 1100)
    assert out.stat().st_size > 50_000  # a real picture, not a blank canvas
    assert no_temp_files(tmp_path)
    # drawn without pyplot: no figure registered, pyplot not even imported by us
    if not had_pyplot:
        assert "matplotlib.pyplot" not in sys.modules
    else:
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


def test_anisotropy_figure_replaces_existing_file(tmp_path, reports):
    out = tmp_path / "r.png"
    out.write_bytes(b"old")
    anisotropy_figure(reports["uniform"], out)
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_fsc_figure(tmp_path):
    a, b = pair(32)
    curves = {"half maps": fsc(a, b, 1.0), "half 1 vs itself": fsc(a, a, 1.0)}
    out = tmp_path / "fsc.png"
    fsc_figure(curves, out)
    assert png_size(out) == (750, 480)
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize(
    ("history", "size"),
    [
        ([1.0, 0.5, 0.3, 0.25], (700, 450)),
        ({"total": [1.0, 0.6], "consistency": [0.5, 0.2]}, (800, 640)),  # + legend, caption
        ([], (700, 450)),
    ],
)
def test_loss_figure(tmp_path, history, size):
    out = tmp_path / "loss.png"
    loss_figure(history, out)
    assert png_size(out) == size


def test_loss_figure_names_every_loss_part_in_plain_words(tmp_path):
    keys = ("consistency", "equivariance", "consistency2", "equivariance2", "total")
    history = {k: [1.0 + i, 0.5 + i] for i, k in enumerate(keys)}
    fig = loss_figure(history, tmp_path / "loss.png")
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    labels = [t.get_text() for legend in legends for t in legend.get_texts()]
    assert len(labels) == len(keys)
    assert not set(labels) & set(keys), labels  # no bare key as a label
    assert not any(k in label for label in labels for k in ("consistency2", "equivariance2"))
    assert sum("Noise2Noise" in label and "other half" in label for label in labels) == 2
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "Noise2Noise" in texts and "measured" in texts  # the caption explains the curves


def test_importing_report_leaves_matplotlib_unimported():
    # matplotlib is imported when a figure is drawn, not when the package is imported
    code = "import sys, spisonet.report; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
