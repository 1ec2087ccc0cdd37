"""Tests of spisonet.nn.train: accumulation, checkpoints, exact resume, safe loading."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from spisonet.errors import InvalidValueError
from spisonet.nn.data import CubePairs
from spisonet.nn.train import (
    CHECKPOINT_FORMAT,
    ModelFileError,
    TrainProgress,
    TrainSettings,
    load_checkpoint,
    model_from_checkpoint,
    resolve_amp,
    resolve_device,
    save_checkpoint,
    train_network,
)

TINY = dict(widths=(4, 8), batch_size=2, acc_batches=1, device="cpu", amp="off", seed=3)


def _pairs(n: int = 4, d: int = 8, seed: int = 0, paired: bool = True) -> CubePairs:
    r = np.random.default_rng(seed)
    c1 = r.standard_normal((n, d, d, d)).astype(np.float32)
    c2 = r.standard_normal((n, d, d, d)).astype(np.float32) if paired else None
    return CubePairs(c1, c2, seed=seed)


def _weight(d: int = 8) -> np.ndarray:
    w = np.random.default_rng(9).random((d, d, d)).astype(np.float32)
    return w


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class SmallNet(nn.Module):
    """A BatchNorm-free residual network: accumulation must equal one big batch exactly."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 1, 3, padding=1)
        self.size_multiple = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def test_settings_validation() -> None:
    with pytest.raises(InvalidValueError, match=r"acc_batches \(3\) cannot exceed batch_size"):
        TrainSettings(batch_size=2, acc_batches=3)
    with pytest.raises(InvalidValueError, match="schedule must be 'constant' or 'onecycle'"):
        TrainSettings(schedule="linear")
    with pytest.raises(InvalidValueError, match="amp must be 'auto', 'bf16' or 'off'"):
        TrainSettings(amp="fp16")
    with pytest.raises(InvalidValueError, match="epochs must be an integer ≥ 0"):
        TrainSettings(epochs=-1)
    s = TrainSettings(widths=[8, 16], epochs=2)
    assert TrainSettings.from_dict(s.to_dict()) == s


def test_devices_and_amp() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidValueError, match="sees no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(InvalidValueError, match="device must be 'auto', 'cpu' or 'cuda"):
        resolve_device("tpu")
    cpu = torch.device("cpu")
    import spisonet.nn.train as train_module

    fast = train_module.cpu_has_fast_bf16()
    assert resolve_amp("auto", cpu) is (torch.bfloat16 if fast else None)
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    assert resolve_amp("off", cpu) is None


def test_auto_amp_on_cpu_follows_native_bf16(monkeypatch) -> None:
    """Emulated bf16 (an AVX2-only CPU) is far slower than float32: auto picks float32 there."""
    import spisonet.nn.train as train_module

    cpu = torch.device("cpu")
    monkeypatch.setattr(train_module, "cpu_has_fast_bf16", lambda: False)
    assert resolve_amp("auto", cpu) is None
    assert resolve_amp("bf16", cpu) is torch.bfloat16  # asked for: honoured
    monkeypatch.setattr(train_module, "cpu_has_fast_bf16", lambda: True)
    assert resolve_amp("auto", cpu) is torch.bfloat16
    from spisonet.correction import PRESETS

    assert PRESETS["cpu"].amp == "auto"


@pytest.mark.parametrize("n", [4, 3])  # 3 cubes: micro-batches of 2 and 1 in the last batch
def test_gradient_accumulation_equals_full_batch(n: int) -> None:
    """Without BatchNorm, acc_batches only changes memory, not the update."""
    pairs = _pairs(n=n)
    results = []
    for acc in (1, 2):
        s = TrainSettings(**{**TINY, "batch_size": 4, "acc_batches": acc, "epochs": 1})
        res = train_network(pairs, _weight(), s, model=SmallNet())
        results.append((_params(res.model), res.history["total"][0]))
    for k in results[0][0]:
        torch.testing.assert_close(results[0][0][k], results[1][0][k], rtol=1e-5, atol=1e-6)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)


@pytest.mark.parametrize("self_weight", [1.0, 0.0])
def test_one_step_matches_a_hand_written_adamw_step(self_weight: float) -> None:
    """One step = AdamW on the gradient of the loss (the loop adds nothing else, and
    passes the loss weights on)."""
    from spisonet.nn.losses import correction_loss
    from spisonet.nn.operators import sampling_tensor

    pairs = _pairs(n=2)
    s = TrainSettings(**{**TINY, "epochs": 1, "learning_rate": 1e-2, "self_weight": self_weight})
    trained = train_network(pairs, _weight(), s, model=SmallNet()).model
    ref = SmallNet()
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.01)
    batch = next(pairs.batches(0, 2))
    loss, _ = correction_loss(
        ref,
        batch.x1,
        batch.x2,
        sampling_tensor(_weight()),
        batch.rotations,
        1.0,
        0.5,
        self_weight=self_weight,
    )
    loss.backward()
    opt.step()
    for k, v in _params(ref).items():
        torch.testing.assert_close(_params(trained)[k], v, rtol=1e-5, atol=1e-7)


def test_history_progress_and_single_map() -> None:
    seen: list[TrainProgress] = []
    s = TrainSettings(**{**TINY, "epochs": 2})
    calls: list[tuple[str, int, int]] = []

    def record(stage: str, done: int, total: int, info: TrainProgress) -> None:
        calls.append((stage, done, total))
        seen.append(info)

    res = train_network(_pairs(n=4, paired=False), _weight(), s, progress=record)
    assert calls == [("train", k, 4) for k in (1, 2, 3, 4)]
    assert [(p.epoch, p.step) for p in seen] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert seen[-1].fraction == pytest.approx(1.0) and seen[0].fraction == pytest.approx(0.25)
    assert all(p.steps_per_epoch == 2 and p.epochs == 2 and p.steps_per_second > 0 for p in seen)
    assert set(res.history) == {"total", "consistency", "equivariance"}  # no N2N terms
    assert len(res.history["total"]) == 2 and res.steps_run == 4
    # epoch mean = mean of the step losses of that epoch (equal batch sizes)
    assert res.history["total"][0] == pytest.approx(np.mean([p.loss for p in seen[:2]]))
    assert not res.model.training


def test_paired_history_has_noise2noise_terms() -> None:
    res = train_network(_pairs(n=2), _weight(), TrainSettings(**{**TINY, "epochs": 1}))
    assert set(res.history) == {
        "total",
        "consistency",
        "equivariance",
        "consistency2",
        "equivariance2",
    }
    h = {k: v[0] for k, v in res.history.items()}
    assert h["total"] == pytest.approx(
        h["equivariance"] + h["consistency"] + 0.5 * (h["equivariance2"] + h["consistency2"]),
        rel=1e-5,
    )


@pytest.mark.parametrize("schedule", ["constant", "onecycle"])
def test_resume_after_interruption_gives_identical_weights(tmp_path, schedule) -> None:
    pairs = _pairs(n=4)
    s = TrainSettings(**{**TINY, "epochs": 2, "schedule": schedule, "acc_batches": 2})
    straight = train_network(pairs, _weight(), s, checkpoint=tmp_path / "a.pt")

    class Killed(Exception):
        pass

    def kill_in_epoch_2(stage: str, done: int, total: int, p: TrainProgress) -> None:
        if p.epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train_network(pairs, _weight(), s, checkpoint=tmp_path / "b.pt", progress=kill_in_epoch_2)
    assert load_checkpoint(tmp_path / "b.pt")["epoch"] == 1
    resumed = train_network(pairs, _weight(), s, checkpoint=tmp_path / "b.pt", resume=True)
    assert resumed.resumed_from_epoch == 1 and resumed.steps_run == 2
    a, b = _params(straight.model), _params(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.history == straight.history
    # and the final checkpoints agree too
    ca, cb = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert ca["epoch"] == cb["epoch"] == 2
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k])


def test_checkpoint_round_trip_and_model_rebuild(tmp_path) -> None:
    s = TrainSettings(**{**TINY, "epochs": 1})
    res = train_network(_pairs(n=2), _weight(), s, checkpoint=tmp_path / "m.pt")
    ck = load_checkpoint(tmp_path / "m.pt")
    assert ck["format"] == CHECKPOINT_FORMAT and ck["settings"]["widths"] == [4, 8]
    assert ck["settings"]["cube_size"] == 8 and ck["settings"]["n_cubes"] == 2
    model = model_from_checkpoint(ck).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), res.model(x))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # atomic: no leftovers


def test_resume_refuses_other_settings(tmp_path) -> None:
    s = TrainSettings(**{**TINY, "epochs": 1})
    train_network(_pairs(n=2), _weight(), s, checkpoint=tmp_path / "m.pt")
    other = TrainSettings(**{**TINY, "epochs": 2, "learning_rate": 1e-3})
    with pytest.raises(ModelFileError, match=r"cannot resume, the settings differ \(learning_rate"):
        train_network(_pairs(n=2), _weight(), other, checkpoint=tmp_path / "m.pt", resume=True)
    with pytest.raises(ModelFileError, match=r"training data differ \(n_cubes: checkpoint 2 vs"):
        train_network(_pairs(n=4), _weight(), s, checkpoint=tmp_path / "m.pt", resume=True)
    with pytest.raises(ModelFileError, match="model file not found"):
        train_network(_pairs(n=2), _weight(), s, checkpoint=tmp_path / "no.pt", resume=True)


class _Evil:
    """Unpickling this calls os.mkdir(target): code execution."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_malicious_pickle_is_refused(tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": _Evil(str(marker))}, evil)
    # sanity: an unsafe load would really run it
    torch.load(evil, weights_only=False)
    assert marker.is_dir()
    marker.rmdir()
    with pytest.raises(ModelFileError, match=r"refused to load: .*could run code"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_non_checkpoint_files_are_refused(tmp_path) -> None:
    p = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(2)}, p)
    with pytest.raises(ModelFileError, match="not a spisonet checkpoint"):
        load_checkpoint(p)
    q = tmp_path / "junk.pt"
    q.write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match=r"not a PyTorch model file.*a text file"):
        load_checkpoint(q)
    r = tmp_path / "partial.pt"
    save_checkpoint(r, {"model": {}, "settings": {}})
    with pytest.raises(ModelFileError, match="lacks its 'epoch' entry"):
        load_checkpoint(r)


def test_bf16_autocast_trains_on_cpu() -> None:
    s = TrainSettings(**{**TINY, "epochs": 1, "amp": "bf16"})
    res = train_network(_pairs(n=2), _weight(), s)
    assert res.amp_dtype == "bfloat16" and np.isfinite(res.history["total"][0])
    assert all(p.dtype == torch.float32 for p in res.model.parameters())


def test_bad_weight_shape() -> None:
    with pytest.raises(InvalidValueError, match=r"W must have the cube shape \(8, 8, 8\)"):
        train_network(_pairs(n=2), _weight(16), TrainSettings(**{**TINY, "epochs": 1}))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny networks run fastest on one thread; on a loaded 2-core machine two threads
    spin-waiting on each other made such tests 10× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_consistency_residual_setting_values() -> None:
    assert TrainSettings(consistency_residual="low").consistency_residual == "low"
    # the booleans stored by checkpoints of the on/off option
    assert TrainSettings(consistency_residual=True).consistency_residual == "all"
    assert TrainSettings(consistency_residual=False).consistency_residual == "off"
    with pytest.raises(InvalidValueError, match="consistency_residual must be one of off, low"):
        TrainSettings(consistency_residual="some")


def test_equivariance_weight_setting_values(tmp_path) -> None:
    assert TrainSettings().equivariance_weight == "all"
    with pytest.raises(
        InvalidValueError, match="equivariance_weight must be one of all, measured, high"
    ):
        TrainSettings(equivariance_weight="some")
    # it trains, and a run cannot resume under the other weighting
    s = TrainSettings(**{**TINY, "epochs": 1, "equivariance_weight": "measured"})
    ck = tmp_path / "m.pt"
    train_network(_pairs(n=2), _weight(), s, checkpoint=ck)
    other = TrainSettings(**{**TINY, "epochs": 2})
    with pytest.raises(ModelFileError, match=r"equivariance_weight: checkpoint 'measured' vs now"):
        train_network(_pairs(n=2), _weight(), other, checkpoint=ck, resume=True)


def test_resume_reads_a_boolean_consistency_residual(tmp_path) -> None:
    # a checkpoint that stored consistency_residual=False resumes under "off", not under "low"
    s = TrainSettings(**{**TINY, "epochs": 1})
    ck = tmp_path / "m.pt"
    train_network(_pairs(n=2), _weight(), s, checkpoint=ck)
    saved = torch.load(ck, weights_only=True)
    saved["settings"]["consistency_residual"] = False
    torch.save(saved, ck)
    more = TrainSettings(**{**TINY, "epochs": 2})
    train_network(_pairs(n=2), _weight(), more, checkpoint=ck, resume=True)
    low = TrainSettings(**{**TINY, "epochs": 3, "consistency_residual": "low"})
    with pytest.raises(
        ModelFileError, match=r"consistency_residual: checkpoint 'off' vs now 'low'"
    ):
        train_network(_pairs(n=2), _weight(), low, checkpoint=ck, resume=True)
