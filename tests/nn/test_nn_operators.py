"""Tests of spisonet.nn.operators: P_W, the sampling weight W and the 24 cube rotations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from skimage.transform import resize

from spisonet.errors import InvalidValueError, MapShapeError, NonFiniteMapError
from spisonet.nn.operators import (
    apply_sampling,
    cube_rotations,
    inverse_rotation,
    prepare_sampling_weight,
    rotate,
    rotate_batch,
    rotate_sampling,
    rotation_index,
    sampling_tensor,
)


def p_w_numpy(v: np.ndarray, w_centred: np.ndarray) -> np.ndarray:
    """The definition Re(ifftn(ifftshift(W) · fftn(v))) over the last three axes."""
    ax = (-3, -2, -1)
    return np.real(np.fft.ifftn(np.fft.ifftshift(w_centred) * np.fft.fftn(v, axes=ax), axes=ax))


def rotate_numpy(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """out[R c] = x[c] with c the voxel coordinate relative to (D - 1) / 2, voxel by voxel."""
    d = x.shape[-1]
    out = np.full_like(x, np.nan)
    h = (d - 1) / 2
    for idx in itertools.product(range(d), repeat=3):
        c = np.array(idx) - h
        j = matrix @ c + h
        ji = tuple(int(round(v)) for v in j)
        assert np.allclose(j, ji)
        out[(..., *ji)] = x[(..., *idx)]
    return out


# ----------------------------------------------------------------------------- P_W


@pytest.mark.parametrize("d", [8, 9, 16])
def test_apply_sampling_matches_numpy_definition_on_random_data(d: int) -> None:
    rng = np.random.default_rng(d)
    v = rng.standard_normal((3, 1, d, d, d))
    w = rng.random((d, d, d))  # not centrosymmetric: the rfft shortcut must still be exact
    expected = p_w_numpy(v, w)
    got64 = apply_sampling(torch.from_numpy(v), sampling_tensor(w, dtype=torch.float64))
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64.numpy(), expected, atol=1e-12)
    got32 = apply_sampling(torch.from_numpy(v.astype(np.float32)), sampling_tensor(w))
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), expected, atol=2e-5)


def test_apply_sampling_on_structured_data() -> None:
    d = 16
    # A low-pass sphere W on a point source gives the sphere's inverse transform.
    k = np.arange(d) - d // 2
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    w = (r <= 4).astype(np.float64)
    v = np.zeros((1, 1, d, d, d))
    v[0, 0, 5, 7, 9] = 1.0
    got = apply_sampling(torch.from_numpy(v), sampling_tensor(w, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, p_w_numpy(v, w), atol=1e-12)
    assert got.max() == pytest.approx(got[0, 0, 5, 7, 9])
    # W = 1 is the identity; W = 0 kills everything; W = delta at the centre keeps the mean.
    t = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 1, d, d, d)))
    ones = sampling_tensor(np.ones((d, d, d)), dtype=torch.float64)
    np.testing.assert_allclose(apply_sampling(t, ones).numpy(), t.numpy(), atol=1e-12)
    zeros = sampling_tensor(np.zeros((d, d, d)), dtype=torch.float64)
    assert float(apply_sampling(t, zeros).abs().max()) == 0.0
    delta = np.zeros((d, d, d))
    delta[d // 2, d // 2, d // 2] = 1
    means = apply_sampling(t, sampling_tensor(delta, dtype=torch.float64))
    np.testing.assert_allclose(
        means.numpy(), np.broadcast_to(t.numpy().mean(axis=(2, 3, 4), keepdims=True), t.shape)
    )


def test_apply_sampling_is_differentiable_and_promotes_low_precision() -> None:
    rng = np.random.default_rng(1)
    w = sampling_tensor(rng.random((4, 4, 4)), dtype=torch.float64)
    v = torch.from_numpy(rng.standard_normal((1, 1, 4, 4, 4))).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: apply_sampling(t, w), (v,), fast_mode=True)
    out = apply_sampling(v.detach().to(torch.bfloat16), w)
    assert out.dtype == torch.float32


def test_sampling_tensor_is_ifftshift() -> None:
    w = np.arange(5**3, dtype=np.float32).reshape(5, 5, 5)
    np.testing.assert_array_equal(sampling_tensor(w).numpy(), np.fft.ifftshift(w))
    assert sampling_tensor(torch.from_numpy(w)).device.type == "cpu"


def test_apply_sampling_shape_mismatch() -> None:
    w = sampling_tensor(np.ones((8, 8, 8)))
    with pytest.raises(MapShapeError, match=r"ending in W's shape \(8, 8, 8\); found"):
        apply_sampling(torch.zeros(1, 1, 16, 16, 16), w)


def test_sampling_tensor_rejects_non_cube() -> None:
    with pytest.raises(MapShapeError, match="W must be a cubic 3D array"):
        sampling_tensor(np.ones((4, 4, 5)))
    with pytest.raises(MapShapeError, match="W must be real"):
        sampling_tensor(np.ones((4, 4, 4), dtype=complex))


# ----------------------------------------------------------------------------- W


def test_prepare_sampling_weight_same_size_is_clip_and_minmax() -> None:
    rng = np.random.default_rng(2)
    f = rng.uniform(-0.5, 1.0, (12, 12, 12))
    clipped = np.maximum(f, 0)
    expected = (clipped - clipped.min()) / (clipped.max() - clipped.min())
    got = prepare_sampling_weight(f, 12)
    assert got.dtype == np.float32 and got.shape == (12, 12, 12)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got.min() == 0.0 and got.max() == pytest.approx(1.0)


def test_prepare_sampling_weight_downsamples_like_skimage_antialiased() -> None:
    rng = np.random.default_rng(3)
    f = rng.uniform(-0.2, 1.0, (40, 40, 40))
    ref = resize(f, (16, 16, 16), order=1, mode="reflect", anti_aliasing=True)
    ref[ref < 0] = 0
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    np.testing.assert_allclose(prepare_sampling_weight(f, 16), ref, atol=1e-6)
    # anti-aliasing matters: plain interpolation differs
    plain = resize(f, (16, 16, 16), order=1, mode="reflect", anti_aliasing=False)
    assert not np.allclose(prepare_sampling_weight(f, 16), plain, atol=1e-2)


def test_prepare_sampling_weight_flat_input_not_rescaled_and_centre_kept() -> None:
    flat = np.full((10, 10, 10), 0.7)
    np.testing.assert_allclose(prepare_sampling_weight(flat, 20), 0.7, atol=1e-6)
    # a radially decreasing FSC keeps its maximum at the centre n//2 of the new grid
    k = np.arange(32) - 16
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    w = prepare_sampling_weight(np.exp(-r / 6), 16)
    assert np.unravel_index(np.argmax(w), w.shape) in {(8, 8, 8), (7, 7, 7)}
    assert w.max() == pytest.approx(1.0)


def test_prepare_sampling_weight_errors() -> None:
    with pytest.raises(MapShapeError, match=r"cubic 3D array; found shape \(4, 4\)"):
        prepare_sampling_weight(np.ones((4, 4)), 4)
    with pytest.raises(MapShapeError, match="must hold real numbers"):
        prepare_sampling_weight(np.ones((4, 4, 4), dtype=complex), 4)
    bad = np.ones((4, 4, 4))
    bad[1, 1, 1] = np.nan
    with pytest.raises(NonFiniteMapError, match="3D FSC contains NaN"):
        prepare_sampling_weight(bad, 4)
    with pytest.raises(InvalidValueError, match="cube_size must be a positive integer; got 0"):
        prepare_sampling_weight(np.ones((4, 4, 4)), 0)


# ----------------------------------------------------------------------------- rotations


def test_cube_rotations_form_the_proper_rotation_group() -> None:
    rots = cube_rotations()
    assert rots.shape == (24, 3, 3) and rots.dtype == np.int64
    assert len({r.tobytes() for r in rots}) == 24
    np.testing.assert_array_equal(rots[0], np.eye(3, dtype=np.int64))
    keys = {r.tobytes(): i for i, r in enumerate(rots)}
    for r in rots:
        assert round(np.linalg.det(r)) == 1
        np.testing.assert_array_equal(r @ r.T, np.eye(3))
    for a, b in itertools.product(rots, rots):
        assert (a @ b).tobytes() in keys  # closure
    for i in range(24):
        j = inverse_rotation(i)
        np.testing.assert_array_equal(rots[i] @ rots[j], np.eye(3))
        assert rotation_index(rots[i]) == i


@pytest.mark.parametrize("d", [4, 5])
def test_rotate_matches_matrix_on_voxel_coordinates(d: int) -> None:
    x = np.random.default_rng(d).standard_normal((2, 1, d, d, d))
    for i, r in enumerate(cube_rotations()):
        got = rotate(torch.from_numpy(x), i).numpy()
        np.testing.assert_array_equal(got, rotate_numpy(x, r))


def test_rotate_composes_like_the_matrices() -> None:
    x = torch.randn(1, 1, 6, 6, 6)
    rots = cube_rotations()
    for a, b in [(1, 2), (5, 17), (23, 9), (12, 12)]:
        both = rotate(rotate(x, a), b)
        assert torch.equal(both, rotate(x, rotation_index(rots[b] @ rots[a])))
        assert torch.equal(rotate(both, inverse_rotation(rotation_index(rots[b] @ rots[a]))), x)


def test_rotate_batch_per_sample_and_differentiable() -> None:
    x = torch.randn(5, 1, 4, 4, 4, requires_grad=True)
    idx = [3, 0, 3, 17, 23]
    out = rotate_batch(x, idx)
    for k, r in enumerate(idx):
        assert torch.equal(out[k], rotate(x[k : k + 1], r)[0])
    assert torch.equal(rotate_batch(x, np.array([7] * 5)), rotate(x, 7))
    assert torch.equal(rotate_batch(x, torch.tensor(idx)), out)
    (out * torch.arange(out.numel()).reshape(out.shape)).sum().backward()
    assert x.grad is not None
    # the gradient of a permutation is the inverse permutation of the weights
    w = torch.arange(out.numel(), dtype=x.dtype).reshape(out.shape)
    for k, r in enumerate(idx):
        back = rotate(w[k : k + 1], inverse_rotation(r))[0]
        assert torch.equal(x.grad[k], back)


def test_rotation_errors() -> None:
    x = torch.zeros(2, 1, 4, 4, 4)
    with pytest.raises(InvalidValueError, match=r"integer in 0\.\.23; got 24"):
        rotate(x, 24)
    with pytest.raises(InvalidValueError, match=r"integer in 0\.\.23; got True"):
        rotate(x, True)
    with pytest.raises(MapShapeError, match="ending in a cube"):
        rotate(torch.zeros(1, 4, 4, 5), 1)
    with pytest.raises(InvalidValueError, match="2 samples, 3 indices"):
        rotate_batch(x, [0, 1, 2])
    with pytest.raises(InvalidValueError, match="not one of the 24 cube rotations"):
        rotation_index(-np.eye(3))


def _slow_rotation_information(w: np.ndarray) -> np.ndarray:
    """Σ over 0 < |k| ≤ D/2 of (1 − W(k)) · W(R⁻¹k) / count, one voxel at a time, with
    R⁻¹ = Rᵀ applied to the centred frequency (indices modulo D, as on the grid)."""
    from spisonet.nn import cube_rotations

    d = w.shape[0]
    c = d // 2
    out = np.zeros(24)
    for r, m in enumerate(cube_rotations()):
        total, count = 0.0, 0
        for idx in np.ndindex(w.shape):
            k = np.array(idx) - c
            if not 0 < np.sqrt((k**2).sum()) <= d / 2:
                continue
            src = (m.T @ k + c) % d
            total += (1.0 - w[idx]) * w[tuple(src)]
            count += 1
        out[r] = total / count
    return out


def test_rotation_information_matches_the_slow_statement():
    from spisonet.nn import rotation_information

    rng = np.random.default_rng(0)
    w = rng.random((6, 6, 6))
    np.testing.assert_allclose(rotation_information(w), _slow_rotation_information(w), atol=1e-12)
    d = 12
    k = np.indices((d,) * 3) - d // 2
    radius = np.sqrt((k**2).sum(0))
    cone = (np.abs(k[0]) > np.cos(np.deg2rad(50)) * radius).astype(float)  # missing cone on z
    info = rotation_information(1.0 - cone)
    np.testing.assert_allclose(info, _slow_rotation_information(1.0 - cone), atol=1e-12)
    keeps_z = np.array([abs(m[0, 0]) == 1 for m in cube_rotations()])
    assert np.all(info[keeps_z] == 0.0) and np.all(info[~keeps_z] > 0.05)


def _slow_rotation_asymmetry(w: np.ndarray) -> np.ndarray:
    """mean |W(R⁻¹k) − W(k)| / mean |W(k) − W̄| over 0 < |k| ≤ D/2, one voxel at a time."""
    from spisonet.nn import cube_rotations

    d = w.shape[0]
    c = d // 2
    ks = []
    for idx in np.ndindex(w.shape):
        k = np.array(idx) - c
        if 0 < np.sqrt((k**2).sum()) <= d / 2:
            ks.append(k)
    values = [w[tuple(k + c)] for k in ks]
    mean = sum(values) / len(values)
    spread = sum(abs(v - mean) for v in values) / len(values)
    out = np.zeros(24)
    for r, m in enumerate(cube_rotations()):
        diff = [abs(w[tuple((m.T @ k + c) % d)] - w[tuple(k + c)]) for k in ks]
        out[r] = sum(diff) / len(diff) / spread
    return out


def _cone_weight(d: int, axis: int, half_angle: float = 40.0) -> np.ndarray:
    k = np.indices((d,) * 3) - d // 2
    radius = np.sqrt((k**2).sum(0))
    cone = np.abs(k[axis]) > np.cos(np.deg2rad(half_angle)) * radius
    return 1.0 - cone.astype(float)


def test_rotation_asymmetry_matches_the_slow_statement():
    from spisonet.nn import rotation_asymmetry

    rng = np.random.default_rng(1)
    w = rng.random((6, 6, 6))
    np.testing.assert_allclose(rotation_asymmetry(w), _slow_rotation_asymmetry(w), atol=1e-12)
    cone = _cone_weight(10, 0)
    asym = rotation_asymmetry(cone)
    np.testing.assert_allclose(asym, _slow_rotation_asymmetry(cone), atol=1e-12)
    assert asym[0] == 0.0
    np.testing.assert_array_equal(rotation_asymmetry(np.full((6, 6, 6), 0.3)), np.zeros(24))
    with pytest.raises(MapShapeError):
        rotation_asymmetry(np.ones((4, 4, 5)))
    with pytest.raises(NonFiniteMapError):
        rotation_asymmetry(np.full((4, 4, 4), np.nan))


@pytest.mark.parametrize("axis", [0, 2])
def test_symmetry_rotations_are_the_turns_about_the_missing_cone(axis):
    """A missing cone along z (axis 0) or x (axis 2): the 8 rotations keeping that axis
    (up to sign) map W onto itself; every other moves the cone onto measured directions."""
    from spisonet.nn import cube_rotations, symmetry_rotations

    cone = _cone_weight(12, axis)
    keeps = [i for i, m in enumerate(cube_rotations()) if abs(m[axis, axis]) == 1]
    assert len(keeps) == 8
    assert symmetry_rotations(cone) == tuple(keeps)
    # a noisy W: the same set, as long as the noise is small next to the cone's contrast
    noisy = np.clip(cone + 0.05 * np.random.default_rng(2).standard_normal(cone.shape), 0, 1)
    assert symmetry_rotations(noisy) == tuple(keeps)
    assert symmetry_rotations(cone, limit=3) == tuple(keeps[:3])
    assert symmetry_rotations(cone, tolerance=0.0) == tuple(keeps)
    assert symmetry_rotations(np.ones((6, 6, 6))) == tuple(range(8))  # no pattern: any 8
    with pytest.raises(InvalidValueError):
        symmetry_rotations(cone, limit=0)
    with pytest.raises(InvalidValueError):
        symmetry_rotations(cone, tolerance=-1.0)


@pytest.mark.parametrize("d", [6, 7])
def test_rotate_sampling_turns_w_in_fourier_space(d: int) -> None:
    # definition: out[k] = W(R⁻¹k), k a frequency vector taken modulo d; and it is what
    # turning a map does to the magnitude of its transform
    rng = np.random.default_rng(d)
    w = rng.random((d, d, d))
    out = rotate_sampling(torch.from_numpy(np.fft.ifftshift(w)), list(range(24))).numpy()
    freqs = np.fft.fftfreq(d, 1.0 / d).astype(int)  # the frequency of each unshifted index
    for r in range(24):
        r_inv = cube_rotations()[r].T
        expected = np.empty((d, d, d))
        for i, j, k in itertools.product(range(d), repeat=3):
            src = r_inv @ np.array([freqs[i], freqs[j], freqs[k]]) % d
            expected[i, j, k] = np.fft.ifftshift(w)[src[0], src[1], src[2]]
        np.testing.assert_array_equal(out[r], expected)
    v = torch.from_numpy(rng.standard_normal((d, d, d)))
    mag = np.abs(np.fft.fftn(v.numpy()))
    for r in (3, 11, 20):
        turned = np.abs(np.fft.fftn(rotate(v, r).numpy()))
        np.testing.assert_allclose(
            turned, rotate_sampling(torch.from_numpy(mag), [r])[0].numpy(), atol=1e-9
        )


def test_rotate_sampling_errors() -> None:
    with pytest.raises(MapShapeError):
        rotate_sampling(torch.ones(4, 4, 5), [0])
    with pytest.raises(InvalidValueError):
        rotate_sampling(torch.ones(4, 4, 4), [24])
