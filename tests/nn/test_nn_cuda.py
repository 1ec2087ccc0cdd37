"""The CUDA path: training, prediction, bf16, checkpoints and a real out-of-memory.

Skipped where PyTorch sees no CUDA GPU (CI has none); run on a GPU machine with
``python -m pytest tests/nn/test_nn_cuda.py``. Each test compares the GPU with the CPU
(float32) or with the GPU's own float32 run: the results must agree to the precision
cuDNN's TF32 convolutions allow, not bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import write_noisy_pair
from typer.testing import CliRunner

from spisonet.nn.data import CubePairs
from spisonet.nn.predict import predict_map
from spisonet.nn.train import (
    TrainSettings,
    load_checkpoint,
    model_from_checkpoint,
    resolve_amp,
    resolve_device,
    train_network,
)
from spisonet.nn.unet import UNet3D

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

SMALL = dict(widths=(8, 16), batch_size=2, acc_batches=1, amp="off", seed=5, epochs=2)


def _pairs(n: int = 6, d: int = 16, seed: int = 0) -> CubePairs:
    r = np.random.default_rng(seed)
    c1 = r.standard_normal((n, d, d, d)).astype(np.float32)
    c2 = (c1 + 0.5 * r.standard_normal((n, d, d, d))).astype(np.float32)
    return CubePairs(c1, c2, seed=seed)


def _weight(d: int = 16) -> np.ndarray:
    return np.random.default_rng(9).random((d, d, d)).astype(np.float32)


def _max_relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def test_auto_device_and_amp_pick_the_gpu() -> None:
    dev = resolve_device("auto")
    assert dev.type == "cuda"
    assert resolve_device("cuda:0").index == 0
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    assert resolve_amp("auto", dev) is expected


def test_training_on_the_gpu_follows_the_cpu() -> None:
    """Same seed, same cubes, float32: the loss curves and the trained networks agree."""
    runs = {}
    for device in ("cpu", "cuda"):
        runs[device] = train_network(_pairs(), _weight(), TrainSettings(**SMALL, device=device))
    cpu, gpu = runs["cpu"], runs["cuda"]
    for key, values in cpu.history.items():
        np.testing.assert_allclose(gpu.history[key], values, rtol=2e-2, atol=1e-4, err_msg=key)
    # the weights themselves may differ where a gradient is ~0 (Adam normalises its sign):
    # what must agree is what the two networks do to a map
    volume = np.random.default_rng(3).standard_normal((32, 32, 32)).astype(np.float32)
    kw = dict(cube_size=16, crop_size=24, edge=4, device="cpu")
    a = predict_map(cpu.model, volume, **kw)
    b = predict_map(gpu.model, volume, **kw)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999
    assert _max_relative(b, a) < 0.05


def test_prediction_on_the_gpu_matches_the_cpu_and_bf16_stays_close() -> None:
    torch.manual_seed(0)
    model = UNet3D(widths=(8, 16, 32))
    volume = np.random.default_rng(1).standard_normal((40, 40, 40)).astype(np.float32)
    kw = dict(cube_size=16, crop_size=24, edge=4, batch_size=3)
    cpu = predict_map(model, volume, device="cpu", **kw)
    gpu = predict_map(model, volume, device="cuda", **kw)
    assert next(model.parameters()).device.type == "cpu"  # the model is left where it was
    assert _max_relative(gpu, cpu) < 5e-3
    bf16 = predict_map(model, volume, device="cuda", amp_dtype=torch.bfloat16, **kw)
    assert np.corrcoef(bf16.ravel(), gpu.ravel())[0, 1] > 0.999
    assert _max_relative(bf16, gpu) < 0.1


def test_checkpoint_written_on_the_gpu_loads_on_the_cpu(tmp_path) -> None:
    ckpt = tmp_path / "model.pt"
    result = train_network(
        _pairs(), _weight(), TrainSettings(**SMALL, device="cuda"), checkpoint=ckpt
    )
    state = load_checkpoint(ckpt)  # weights_only: no code runs on loading
    assert all(t.device.type == "cpu" for t in state["model"].values())
    model = model_from_checkpoint(state, ckpt)
    volume = np.random.default_rng(2).standard_normal((32, 32, 32)).astype(np.float32)
    kw = dict(cube_size=16, crop_size=24, edge=4, device="cpu")
    np.testing.assert_allclose(
        predict_map(model, volume, **kw), predict_map(result.model, volume, **kw), atol=1e-5
    )


def test_a_real_gpu_out_of_memory_is_a_clear_error_and_writes_nothing(tmp_path) -> None:
    """The allocator is capped at a few MB: the preset's first batch cannot fit."""
    import spisonet.cli as cli
    from spisonet.errors import DeviceMemoryError

    paths = write_noisy_pair(tmp_path / "in", 48, 2.0)
    out = tmp_path / "out"
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(8 * 2**20 / total)
    try:
        result = CliRunner().invoke(
            cli.app,
            ["reconstruct", str(paths["h1"]), str(paths["h2"]), "--preset", "cpu",
             "--device", "cuda", "--epochs", "1", "-o", str(out)],
        )  # fmt: skip
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert isinstance(result.exception, DeviceMemoryError), result.output
    assert "--batch-size" in str(result.exception)
    assert not list(out.glob("*.mrc")) if out.exists() else True
