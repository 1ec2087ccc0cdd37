"""CTF deconvolution of a tomogram with a Wiener-like filter (issue 12, step 2).

The filter is the one of Tegunov's ``tom_deconv`` as IsoNet uses it before training:
a Wiener filter CTF / (CTF² + 1/SNR) whose assumed spectral SNR falls off exponentially
with frequency and is cut by a cosine high-pass at the lowest frequencies. With s the
frequency as a fraction of Nyquist (0 … 1) and d the voxel size in Å,

- ``highpass(s) = 1 − cos(π·min(1, s / highpass_nyquist))``
- ``SNR(s) = exp(−s·snr_falloff·100 / d) · 10^(3·deconv_strength) · highpass(s)``
- ``filter(s) = CTF(s) / (CTF(s)² + 1/SNR(s))``, 0 where SNR = 0 (s = 0),

normalised to a largest magnitude of 1. The CTF comes from teamtomo's ``torch-ctf`` with
its sign convention: positive underfocus gives CTF(0) = +A (amplitude contrast) and a
positive first lobe, i.e. CTF = sin χ' with χ' = π·λ·Δz·f² − (π/2)·Cs·λ³·f⁴ + φ + asin A,
the negative of the textbook −[√(1−A²)·sin χ + A·cos χ] (χ including φ). ``tom_deconv``
uses the same sign, so the filter keeps the contrast of the tomogram.

:func:`deconvolve` applies the 1D filter radially (isotropically) in 3D and gives the result
the input's mean and standard deviation. No file access here: arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from ..errors import InvalidValueError, MapShapeError, NonFiniteMapError

__all__ = ["ctf_1d", "deconv_filter", "deconvolve", "first_ctf_zero"]

#: The 1D filter is sampled at least this finely (0 … Nyquist) before the radial lookup.
FILTER_SAMPLES = 4096


# --------------------------------------------------------------------------- checks
def _number(value: object, name: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        v = float("nan")
    if not np.isfinite(v):
        raise InvalidValueError(f"{name} must be a finite number, got {value!r}")
    return v


def _positive(value: object, name: str, unit: str) -> float:
    v = _number(value, name)
    if not v > 0:
        units = f" {unit}" if unit else ""
        raise InvalidValueError(f"{name} must be > 0{units}, got {value!r}")
    return v


def _check_options(
    voxel_size: float,
    defocus: float,
    voltage: float,
    spherical_aberration: float,
    amplitude_contrast: float,
    phase_shift: float,
) -> tuple[float, float, float, float, float, float]:
    """The CTF parameters as floats, or :class:`InvalidValueError` naming the bad one."""
    vs = _positive(voxel_size, "voxel_size", "Å")
    dz = _number(defocus, "defocus")
    if not dz > 0:
        raise InvalidValueError(f"defocus must be > 0 µm (underfocus), got {defocus!r}")
    kv = _positive(voltage, "voltage", "kV")
    cs = _number(spherical_aberration, "spherical_aberration (mm)")
    amp = _number(amplitude_contrast, "amplitude_contrast")
    if not 0.0 <= amp < 1.0:
        raise InvalidValueError(
            f"amplitude_contrast must be a fraction in [0, 1), got {amplitude_contrast!r}"
        )
    ph = _number(phase_shift, "phase_shift (degrees)")
    return vs, dz, kv, cs, amp, ph


def _check_n_freq(n_freq: object) -> int:
    if isinstance(n_freq, bool) or not isinstance(n_freq, int | np.integer) or n_freq < 2:
        raise InvalidValueError(f"n_freq must be an integer ≥ 2, got {n_freq!r}")
    return int(n_freq)


def as_tomogram(tomogram: np.ndarray, name: str = "the tomogram") -> np.ndarray:
    """``tomogram`` as a float32 (Z, Y, X) array of finite numbers (no copy if it is one).

    Raises :class:`MapShapeError` (not 3D, empty, not real) or :class:`NonFiniteMapError`.
    """
    t = np.asarray(tomogram)
    if t.ndim != 3 or t.size == 0:
        raise MapShapeError(f"{name}: expected a non-empty 3D (Z, Y, X) array; found {t.shape}")
    if not np.issubdtype(t.dtype, np.number) or np.iscomplexobj(t):
        raise MapShapeError(f"{name}: expected real numbers; found dtype {t.dtype}")
    t = t.astype(np.float32, copy=False)
    bad = sum(int(t[z].size - np.count_nonzero(np.isfinite(t[z]))) for z in range(t.shape[0]))
    if bad:
        raise NonFiniteMapError(f"{name}: contains {bad} NaN or infinite values; expected finite")
    return t


# --------------------------------------------------------------------------- 1D curves
def ctf_1d(
    n_freq: int,
    voxel_size: float,
    defocus: float,
    voltage: float = 300.0,
    spherical_aberration: float = 2.7,
    amplitude_contrast: float = 0.07,
    phase_shift: float = 0.0,
) -> np.ndarray:
    """The CTF at ``n_freq`` frequencies evenly spaced from 0 to Nyquist, 1/(2·voxel_size).

    Computed by teamtomo's ``torch-ctf`` (float32 inside; torch is loaded here, not on
    ``import spisonet``). Sign: CTF(0) = +amplitude_contrast and the first lobe is positive
    for underfocus (see the module docstring).

    Parameters
    ----------
    n_freq
        Number of samples (≥ 2), the first at 0, the last at Nyquist.
    voxel_size
        Å per voxel.
    defocus
        Underfocus in µm (positive).
    voltage, spherical_aberration, amplitude_contrast, phase_shift
        kV; mm; fraction in [0, 1); degrees (phase plate).

    Returns
    -------
    (n_freq,) float64 array.
    """
    n = _check_n_freq(n_freq)
    vs, dz, kv, cs, amp, ph = _check_options(
        voxel_size, defocus, voltage, spherical_aberration, amplitude_contrast, phase_shift
    )
    try:
        from torch_ctf import calculate_ctf_1d
    except ImportError as exc:
        raise InvalidValueError(
            "the CTF needs teamtomo's torch-ctf (Python ≥ 3.11): pip install torch-ctf"
        ) from exc
    ctf = calculate_ctf_1d(
        defocus=dz,
        voltage=kv,
        spherical_aberration=cs,
        amplitude_contrast=amp,
        phase_shift=ph,
        pixel_size=vs,
        n_samples=n,
        oversampling_factor=1,
    )
    return ctf.detach().cpu().numpy().astype(np.float64).reshape(n)


def first_ctf_zero(
    voxel_size: float,
    defocus: float,
    voltage: float = 300.0,
    spherical_aberration: float = 2.7,
    amplitude_contrast: float = 0.07,
    phase_shift: float = 0.0,
) -> float | None:
    """The frequency of the CTF's first zero in cycles/voxel (≤ 0.5), or None when the
    CTF keeps its sign up to Nyquist. Found as the first sign change of :func:`ctf_1d`
    on 4097 samples, refined by linear interpolation (error ≪ 10⁻⁴ cycles/voxel)."""
    n = 4097
    ctf = ctf_1d(
        n, voxel_size, defocus, voltage, spherical_aberration, amplitude_contrast, phase_shift
    )
    change = np.flatnonzero(np.sign(ctf[1:]) != np.sign(ctf[:-1]))
    if change.size == 0:
        return None
    i = int(change[0])
    step = 0.5 / (n - 1)
    return float(step * (i + ctf[i] / (ctf[i] - ctf[i + 1])))


def deconv_filter(
    n_freq: int,
    voxel_size: float,
    defocus: float,
    voltage: float = 300.0,
    spherical_aberration: float = 2.7,
    amplitude_contrast: float = 0.07,
    phase_shift: float = 0.0,
    snr_falloff: float = 1.0,
    deconv_strength: float = 1.0,
    highpass_nyquist: float = 0.02,
) -> np.ndarray:
    """The 1D Wiener-like deconvolution filter at ``n_freq`` frequencies 0 … Nyquist.

    ``CTF / (CTF² + 1/SNR)`` with the fall-off SNR and high-pass of the module docstring,
    divided by its largest magnitude (so its maximum is 1 for the usual positive first
    lobe). ``snr_falloff`` (> 0): how fast the assumed SNR falls with frequency (1.0–1.2
    usual); ``deconv_strength`` (> 0): log₁₀ of the low-frequency SNR over 3 (1 → 1000);
    ``highpass_nyquist`` in (0, 1]: the fraction of Nyquist below which the cosine
    high-pass rolls the filter to 0. Other parameters as in :func:`ctf_1d`.

    Returns
    -------
    (n_freq,) float64 array; element 0 (zero frequency) is 0.
    """
    falloff = _positive(snr_falloff, "snr_falloff", "")
    strength = _positive(deconv_strength, "deconv_strength", "")
    hp = _number(highpass_nyquist, "highpass_nyquist")
    if not 0.0 < hp <= 1.0:
        raise InvalidValueError(
            f"highpass_nyquist must be a fraction of Nyquist in (0, 1], got {highpass_nyquist!r}"
        )
    ctf = ctf_1d(
        n_freq,
        voxel_size,
        defocus,
        voltage,
        spherical_aberration,
        amplitude_contrast,
        phase_shift,
    )
    vs = float(voxel_size)
    s = np.linspace(0.0, 1.0, ctf.size)  # fraction of Nyquist
    highpass = 1.0 - np.cos(np.pi * np.minimum(1.0, s / hp))
    snr = np.exp(-s * falloff * 100.0 / vs) * 10.0 ** (3.0 * strength) * highpass
    # CTF / (CTF² + 1/SNR) written without 1/SNR, so SNR = 0 gives 0 and no division by 0
    filt = ctf * snr / (ctf * ctf * snr + 1.0)
    peak = np.abs(filt).max()
    if not peak > 0:
        raise InvalidValueError(
            "the deconvolution filter is zero at every frequency; check defocus and voxel_size"
        )
    return filt / peak


# --------------------------------------------------------------------------- 3D
def _mean_std(volume: np.ndarray) -> tuple[float, float]:
    """Mean and population standard deviation, float64, one z-plane at a time."""
    n = volume.size
    total = sum(float(volume[z].sum(dtype=np.float64)) for z in range(volume.shape[0]))
    mean = total / n
    sq = 0.0
    for z in range(volume.shape[0]):
        d = volume[z].astype(np.float64) - mean
        sq += float(np.dot(d.ravel(), d.ravel()))
    return mean, (sq / n) ** 0.5


def deconvolve(
    tomogram: np.ndarray,
    voxel_size: float,
    defocus: float,
    voltage: float = 300.0,
    spherical_aberration: float = 2.7,
    amplitude_contrast: float = 0.07,
    phase_shift: float = 0.0,
    snr_falloff: float = 1.0,
    deconv_strength: float = 1.0,
    highpass_nyquist: float = 0.02,
    workers: int = 1,
) -> np.ndarray:
    """CTF-deconvolve a tomogram: multiply its Fourier transform by the radial filter.

    Each Fourier voxel (k_z, k_y, k_x) of the (Z, Y, X) tomogram has the radius
    √((k_z/(Z·d))² + (k_y/(Y·d))² + (k_x/(X·d))²) in cycles/Å (d = ``voxel_size``); the
    filter there is linearly interpolated from :func:`deconv_filter` sampled at
    max(:data:`FILTER_SAMPLES`, 4·longest edge) frequencies 0 … Nyquist, and held at its
    Nyquist value beyond Nyquist (the corners). The result is rescaled to the input's
    mean and standard deviation (the filter removes the mean). ``workers``: threads of the
    FFTs (``scipy.fft``; −1 = all cores). Memory: the input, a complex64 half spectrum
    (≈ one float32 tomogram, transformed in place) and the float32 output (≈ 3× the
    float32 tomogram at the peak), plus per-plane scratch.

    Parameters
    ----------
    tomogram
        (Z, Y, X) array of finite real numbers, any size.
    voxel_size, defocus, ...
        As in :func:`deconv_filter` (Å, µm underfocus, kV, mm, fraction, degrees).

    Returns
    -------
    (Z, Y, X) float32 array.
    """
    t = as_tomogram(tomogram)
    n_fine = max(FILTER_SAMPLES, 4 * max(t.shape))
    filt = deconv_filter(
        n_fine,
        voxel_size,
        defocus,
        voltage,
        spherical_aberration,
        amplitude_contrast,
        phase_shift,
        snr_falloff,
        deconv_strength,
        highpass_nyquist,
    )
    vs = float(voxel_size)
    freqs = np.linspace(0.0, 0.5 / vs, n_fine)  # cycles/Å
    mean_in, std_in = _mean_std(t)
    if not std_in > 0:  # a constant tomogram: nothing to deconvolve
        return t.copy()

    nz, ny, nx = t.shape
    spectrum = scipy.fft.rfftn(t, workers=workers)  # complex64, (Z, Y, X//2 + 1)
    fz = np.fft.fftfreq(nz, d=vs)
    fy = np.fft.fftfreq(ny, d=vs)
    fx = np.fft.rfftfreq(nx, d=vs)
    r2_yx = fy[:, None] ** 2 + fx[None, :] ** 2  # (Y, X//2 + 1), float64
    for z in range(nz):
        radius = np.sqrt(r2_yx + fz[z] ** 2)
        spectrum[z] *= np.interp(radius, freqs, filt).astype(np.float32)
    del t  # frees the float32 copy when the input was of another dtype
    # the inverse in two steps: irfftn would hold a second complex copy of the spectrum
    spectrum = scipy.fft.ifftn(spectrum, axes=(0, 1), overwrite_x=True, workers=workers)
    out = scipy.fft.irfft(spectrum, n=nx, axis=2, workers=workers)
    del spectrum
    out = out.astype(np.float32, copy=False)

    mean_out, std_out = _mean_std(out)
    scale = std_in / std_out if std_out > 0 else 0.0
    for z in range(nz):  # in place, plane by plane: no float64 copy of the volume
        plane = out[z]
        plane -= np.float32(mean_out)
        plane *= np.float32(scale)
        plane += np.float32(mean_in)
    return out
