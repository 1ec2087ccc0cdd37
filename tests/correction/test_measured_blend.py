"""The measured-data blend (spisonet.correction.measured) against slow statements."""

from __future__ import annotations

import numpy as np
import pytest

from spisonet.correction.measured import (
    LOSS_MARGIN,
    keep_measured_data,
    network_weight_per_shell,
)
from spisonet.errors import MapMismatchError


def _slow_alpha(o1, o2, h1, h2, measured, mask, smooth, truth=None):
    """α per shell by explicit loops over the full, fftshift-ed grid and a search over a
    fine grid of α: the mix α·O + (1 − α)·H whose correlation with the truth is highest.

    With ``truth`` the exact correlation is used; without it, <X, T> and |T|² are replaced
    by the cross-half estimates (<H1, H2> for <H, T> and |T|², ½(<O1, H2> + <O2, H1>) for
    <O, T>). 1 where <H1, H2> ≤ 0 (no signal to judge by).
    """
    n = h1.shape[0]
    m = 1.0 if mask is None else mask
    f = {
        k: np.fft.fftshift(np.fft.fftn(v * m)) for k, v in dict(o1=o1, o2=o2, h1=h1, h2=h2).items()
    }
    if truth is not None:
        f["t"] = np.fft.fftshift(np.fft.fftn(truth * m))
    c = n // 2
    names = ("ht", "ot", "tt", "hh", "oo", "oh")
    sums = {k: np.zeros(n // 2 + 1) for k in names}
    for i in range(n):
        for j in range(n):
            for k in range(n):
                s = int(round(np.sqrt((i - c) ** 2 + (j - c) ** 2 + (k - c) ** 2)))
                if s > n // 2:
                    continue
                h = 0.5 * (f["h1"][i, j, k] + f["h2"][i, j, k])
                o = 0.5 * (f["o1"][i, j, k] + f["o2"][i, j, k])
                if truth is not None:
                    t = f["t"][i, j, k]
                    h_t, o_t, t_t = (h * np.conj(t)).real, (o * np.conj(t)).real, abs(t) ** 2
                else:
                    h_t = (f["h1"][i, j, k] * np.conj(f["h2"][i, j, k])).real
                    o_t = (
                        0.5
                        * (
                            f["o1"][i, j, k] * np.conj(f["h2"][i, j, k])
                            + f["o2"][i, j, k] * np.conj(f["h1"][i, j, k])
                        ).real
                    )
                    t_t = h_t
                w = measured[i, j, k]
                for key, v in zip(
                    names,
                    (h_t, o_t, t_t, abs(h) ** 2, abs(o) ** 2, (o * np.conj(h)).real),
                    strict=True,
                ):
                    sums[key][s] += w * v
    if smooth:
        kern = np.ones(2 * smooth + 1)
        sums = {key: np.convolve(v, kern, "same") for key, v in sums.items()}
    grid = np.linspace(0.0, 1.0, 4001)
    alpha = np.ones(n // 2 + 1)
    for s in range(n // 2 + 1):
        if sums["tt"][s] <= 0 or sums["hh"][s] <= 0 or sums["oo"][s] <= 0:
            continue
        product = grid * sums["ot"][s] + (1 - grid) * sums["ht"][s]
        power = (
            grid**2 * sums["oo"][s]
            + 2 * grid * (1 - grid) * sums["oh"][s]
            + (1 - grid) ** 2 * sums["hh"][s]
        )
        alpha[s] = grid[np.argmax(product / np.sqrt(power * sums["tt"][s]))]
    return alpha


def _smooth_random(n, rng, sigma=2.0):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(rng.standard_normal((n, n, n)), sigma)


@pytest.mark.parametrize("smooth", [0, 1])
def test_alpha_equals_the_slow_statement_on_random_maps(smooth):
    rng = np.random.default_rng(0)
    n = 12
    o1, o2, h1, h2 = (rng.standard_normal((n, n, n)) for _ in range(4))
    measured = rng.uniform(0, 1, (n, n, n))
    # centrosymmetric about the fftshift centre, as a 3D FSC is: index i ↔ (n − i) mod n
    mirror = np.roll(measured[::-1, ::-1, ::-1], 1, axis=(0, 1, 2))
    measured = 0.5 * (measured + mirror)
    mask = rng.uniform(0.5, 1.0, (n, n, n))
    fast = network_weight_per_shell((o1, o2), (h1, h2), measured, mask, smooth=smooth)
    slow = _slow_alpha(o1, o2, h1, h2, measured, mask, smooth)
    np.testing.assert_allclose(fast, slow, atol=5e-4)  # the grid's step is 2.5e-4
    assert 0 < np.mean((fast > 0) & (fast < 1))  # not all at the ends: the optimum is seen


def test_the_estimate_follows_the_true_optimum_on_structured_maps():
    """Halves = truth + independent noise; the network is right in low shells and wrong
    (its own noise, no signal) in high ones: the cross-half estimate finds the same α as the
    truth's optimum, near 1 where the network is right and near 0 where it is not."""
    rng = np.random.default_rng(1)
    n = 32
    truth = _smooth_random(n, rng, 1.0)
    noise = truth.std() * 0.8
    h1 = truth + noise * rng.standard_normal(truth.shape)
    h2 = truth + noise * rng.standard_normal(truth.shape)
    k = np.fft.fftshift(
        np.sqrt(sum(g**2 for g in np.meshgrid(*[np.fft.fftfreq(n, 1 / n)] * 3, indexing="ij")))
    )
    low = np.fft.ifftshift(k <= 8)

    def network(h):
        right = np.fft.ifftn(np.fft.fftn(truth) * low).real
        wrong = np.fft.ifftn(np.fft.fftn(_smooth_random(n, rng, 0.5)) * ~low).real
        return right + wrong

    o1, o2 = network(h1), network(h2)
    measured = np.ones((n, n, n))
    est = network_weight_per_shell((o1, o2), (h1, h2), measured, None, smooth=1)
    exact = _slow_alpha(o1, o2, h1, h2, measured, None, 1, truth=truth)
    assert np.all(est[2:7] > 0.8) and np.all(exact[2:7] > 0.99)
    assert np.all(est[11:15] < 0.15) and np.all(exact[11:15] < 0.15)
    assert np.max(np.abs(est[2:15] - exact[2:15])) < 0.15
    blend = keep_measured_data([o1, o2], [h1, h2], measured, None, smooth=1)

    def corr(a, b, band):
        fa, fb = np.fft.fftn(a)[band], np.fft.fftn(b)[band]
        return np.real(np.vdot(fa, fb)) / np.sqrt(np.vdot(fa, fa).real * np.vdot(fb, fb).real)

    high = np.fft.ifftshift((k >= 11) & (k <= 14))
    avg_net, avg_blend = 0.5 * (o1 + o2), np.mean(blend.maps, axis=0)
    assert corr(avg_blend, truth, high) > corr(avg_net, truth, high) + 0.3
    assert corr(avg_blend, truth, np.fft.ifftshift(k <= 5)) > 0.99
    kept = np.flatnonzero(blend.network_weight < 0.5)  # shells mostly the data's
    assert kept.size and kept.min() >= 7
    mixed = blend.network_weight < 1.0  # the reported gain is what the margin was held to
    assert np.all(blend.gain[mixed] > LOSS_MARGIN) and np.all(blend.gain[~mixed] <= LOSS_MARGIN)


def test_unmeasured_directions_keep_the_network_and_identity_changes_nothing():
    rng = np.random.default_rng(2)
    n = 16
    h1, h2, o1, o2 = (_smooth_random(n, rng, 1.0) for _ in range(4))
    none = np.zeros((n, n, n))
    out = keep_measured_data([o1, o2], [h1, h2], none, None)
    np.testing.assert_allclose(out.maps[0], o1, atol=1e-5)
    np.testing.assert_allclose(out.maps[1], o2, atol=1e-5)
    same = keep_measured_data([h1, h2], [h1, h2], np.ones((n, n, n)), None)
    np.testing.assert_allclose(same.maps[0], h1, atol=1e-5)
    assert np.all(same.network_weight == 1.0)


def test_mismatched_shapes_are_named():
    a = np.zeros((8, 8, 8))
    with pytest.raises(MapMismatchError, match="half 2"):
        network_weight_per_shell((a, a), (a, np.zeros((6, 6, 6))), a)
    with pytest.raises(MapMismatchError, match="two half maps"):
        keep_measured_data([a], [a, a], a)


def test_within_limits_the_mix_to_its_shells():
    """within = 0 from shell 5 on: those shells keep the network's output exactly, the
    shells below get the same mix as without it, and the reported share says so."""
    rng = np.random.default_rng(3)
    n = 16
    truth = _smooth_random(n, rng, 0.7)
    h1, h2 = (truth + 0.3 * truth.std() * rng.standard_normal(truth.shape) for _ in range(2))
    o1, o2 = (_smooth_random(n, rng, 0.7) for _ in range(2))  # no signal: the data win
    measured = np.ones((n, n, n))
    within = (np.arange(n // 2 + 1) < 5).astype(float)
    capped = keep_measured_data([o1, o2], [h1, h2], measured, None, within=within, margin=None)
    free = keep_measured_data([o1, o2], [h1, h2], measured, None, margin=None)
    k = np.sqrt(sum(g**2 for g in np.meshgrid(*[np.fft.fftfreq(n, 1 / n)] * 3, indexing="ij")))
    high, low = np.rint(k) >= 5, np.rint(k) < 5
    for c, f, o in zip(capped.maps, free.maps, (o1, o2), strict=True):
        np.testing.assert_allclose(np.fft.fftn(c)[high], np.fft.fftn(o)[high], atol=1e-4)
        np.testing.assert_allclose(np.fft.fftn(c)[low], np.fft.fftn(f)[low], atol=1e-4)
    assert np.all(capped.network_weight[5:] == 1.0)
    np.testing.assert_allclose(capped.network_weight[:5], free.network_weight[:5])
    assert np.any(free.network_weight[5:] < 1.0)  # without the cap those shells were mixed


def test_a_rescaled_but_better_network_is_kept_and_its_correlations_are_estimated():
    """The network returns the truth at 1.2× plus a little noise: closer in correlation than
    the raw halves, farther in squared error. The least-squares mix would pull in the data;
    the correlation's optimum keeps (nearly all of) the network, the default margin keeps it
    exactly, and the estimated correlations follow the true ones."""
    rng = np.random.default_rng(4)
    n = 24
    truth = _smooth_random(n, rng, 1.0)
    s = truth.std()
    h1, h2 = (truth + 0.5 * s * rng.standard_normal(truth.shape) for _ in range(2))
    o1, o2 = (1.2 * truth + 0.1 * s * rng.standard_normal(truth.shape) for _ in range(2))
    measured = np.ones((n, n, n))
    gated = keep_measured_data([o1, o2], [h1, h2], measured, None)
    free = keep_measured_data([o1, o2], [h1, h2], measured, None, margin=None)
    assert np.all(gated.network_weight == 1.0)
    np.testing.assert_allclose(gated.maps[0], o1, atol=1e-5)
    # the least-squares share (amplitude counts) would have pulled in the data; the
    # correlation's optimum, even without the margin, stays with the network
    fd, fh, ft = (np.fft.fftn(x) for x in ((h1 + h2 - o1 - o2) / 2, (h1 + h2) / 2, truth))
    mse_alpha = np.real(np.vdot(fd, fh - ft)) / np.vdot(fd, fd).real
    assert mse_alpha < 0.8
    assert np.min(free.network_weight[2:10]) > max(0.9, mse_alpha + 0.1)

    def true_corr(x):
        fx, ft = np.fft.fftn(x), np.fft.fftn(truth)
        k = np.sqrt(sum(g**2 for g in np.meshgrid(*[np.fft.fftfreq(n, 1 / n)] * 3, indexing="ij")))
        out = []
        for shell in range(n // 2 + 1):
            sel = np.abs(np.rint(k) - shell) <= 1  # pooled like smooth=1
            a, b = fx[sel], ft[sel]
            out.append(np.vdot(a, b).real / np.sqrt(np.vdot(a, a).real * np.vdot(b, b).real))
        return np.array(out)

    band = slice(2, 9)
    np.testing.assert_allclose(gated.rho_network[band], true_corr((o1 + o2) / 2)[band], atol=0.05)
    np.testing.assert_allclose(gated.rho_raw[band], true_corr((h1 + h2) / 2)[band], atol=0.05)


def test_alpha_is_judged_on_one_weight_and_applied_with_the_other():
    """estimate_with decides α (as network_weight_per_shell with that weight, margin off);
    the maps get ``measured · (1 − α)`` of the data, written out voxel by voxel here."""
    rng = np.random.default_rng(5)
    n = 12
    truth = _smooth_random(n, rng, 0.8)
    h1, h2 = (truth + 0.4 * truth.std() * rng.standard_normal(truth.shape) for _ in range(2))
    o1, o2 = (0.5 * truth + _smooth_random(n, rng, 0.8) for _ in range(2))
    judge = rng.random((n, n, n))
    minus = (-np.arange(n)) % n  # index of −k on the fftshift-ed grid (n even)
    judge = 0.5 * (judge + judge[np.ix_(minus, minus, minus)])  # W(k) = W(−k)
    applied = np.sqrt(judge)
    blend = keep_measured_data([o1, o2], [h1, h2], applied, None, margin=None, estimate_with=judge)
    alpha = network_weight_per_shell((o1, o2), (h1, h2), judge, None)
    np.testing.assert_allclose(blend.network_weight, alpha)
    assert np.any(alpha < 1.0)
    c = n // 2
    for o, h, out in zip((o1, o2), (h1, h2), blend.maps, strict=True):
        fo = np.fft.fftshift(np.fft.fftn(o))
        fh = np.fft.fftshift(np.fft.fftn(h))
        expected = fo.copy()
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    s = int(round(np.sqrt((i - c) ** 2 + (j - c) ** 2 + (k - c) ** 2)))
                    if s <= n // 2:
                        share = applied[i, j, k] * (1.0 - alpha[s])
                        expected[i, j, k] = fo[i, j, k] + share * (fh[i, j, k] - fo[i, j, k])
        want = np.fft.ifftn(np.fft.ifftshift(expected)).real
        np.testing.assert_allclose(out, want, atol=1e-4 * np.abs(want).max())


def test_unmeasured_share_is_the_gated_share_of_shells_2_to_n_over_4():
    from spisonet.correction.pipeline import unmeasured_share

    for n in (12, 14):  # n/4 whole and not
        gate = np.random.default_rng(n).random((n, n, n)).astype(np.float32)
        c = n // 2
        inside = below = 0
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    s = int(round(np.sqrt((i - c) ** 2 + (j - c) ** 2 + (k - c) ** 2)))
                    if 2 <= s <= n // 4:
                        inside += 1
                        below += gate[i, j, k] < 0.5
        assert unmeasured_share(gate) == pytest.approx(below / inside)
        assert unmeasured_share(np.ones_like(gate)) == 0.0


def _halves_with_a_cone(n, half_angle_deg, rng):
    """Two noisy halves of one random structure, with every Fourier voxel within
    ``half_angle_deg`` of the z axis set to 0 (signal and noise: nothing measured there)."""
    truth = _smooth_random(n, rng, sigma=1.0)
    k = np.fft.fftfreq(n) * n
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    radius = np.sqrt(kx**2 + ky**2 + kz**2)
    cos = np.abs(kz) / np.where(radius > 0, radius, 1.0)
    keep = (cos < np.cos(np.radians(half_angle_deg))) | (radius == 0)
    out = []
    for _ in range(2):
        v = truth + 0.3 * rng.standard_normal(truth.shape)
        out.append(np.fft.ifftn(np.fft.fftn(v) * keep).real.astype(np.float32))
    return truth, out


def test_the_step_drops_its_margin_only_where_nothing_is_missing():
    """measured_data_step mixes with LOSS_MARGIN when the power gate finds a missing region
    and with no margin when it finds none: the same maps, the explicit margins give the same
    blend as the default."""
    from spisonet.correction.pipeline import measured_data_step, unmeasured_share
    from spisonet.weights import power_presence

    n = 24
    rng = np.random.default_rng(5)
    fsc = np.ones((n, n, n), dtype=np.float32)
    for angle, expected in ((0.0, 0.0), (60.0, LOSS_MARGIN)):
        _, (h1, h2) = _halves_with_a_cone(n, angle, rng)
        share = unmeasured_share(power_presence(h1, h2, None, 0.1))
        assert (share > 0.2) if angle else (share == 0.0)
        nets = [0.8 * h + 0.1 * _smooth_random(n, rng) for h in (h1, h2)]
        step = measured_data_step(nets, [h1, h2], None, fsc, 1.0, None)
        assert step.margin == expected
        explicit = measured_data_step(nets, [h1, h2], None, fsc, 1.0, None, margin=expected)
        for a, b in zip(step.maps, explicit.maps, strict=True):
            np.testing.assert_array_equal(a, b)
