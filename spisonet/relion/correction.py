"""The misalignment correction inside RELION (ALGORITHM.md §5): :class:`RelionCorrection`.

Called by :func:`spisonet.relion.runner.run_external_reconstruct` for each half of each
iteration with RELION's plain map. Gates (healpix order, current resolution), the
rendezvous of the two halves (:mod:`.rendezvous`), the 3D FSC of the unregularised halves,
one network per half (:func:`spisonet.correction.correct_anisotropy`, continuing the
previous iteration's model), then the output is low-passed, given RELION's radial
amplitudes and RELION's own coefficients where Fourier space was measured. Torch is
reached only through :mod:`spisonet.correction` and :mod:`spisonet.nn`.

Every call leaves one line (:attr:`RelionCorrection.summary`, which the runner writes to
the log and RELION's stdout): both gates with their values, whether the network ran and
why not, its steps and the seconds. The last, joined iteration also says when the network
never ran in the whole refinement. While a half works, :class:`~.watchdog.RelionWatch`
stops it within seconds once RELION is gone.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..correction import CorrectionSettings, correct_anisotropy, preset_settings, resolve_preset
from ..errors import MapShapeError, SpisonetError
from ..fourier import fourier_blend, frequency_radius, lowpass, rfft_shells
from ..fsc3d import fsc3d
from ..fsc_shells import fsc_curve
from ..io import read_map, write_map
from ..io.relion_runs import (
    JobName,
    healpix_order_of_run,
    newest_iteration_file,
    optimiser_command_option,
    parse_job_name,
    parse_run_file,
    positive_number,
    read_star_value,
    run_has_halves,
)
from ..maps import _apply_radial, _shell_mean_amplitude, combine_map, fsc_weight, whiten
from ..masks import spherical_mask
from ..weights import measured_weight
from .job import ExternalReconstructJob, current_resolution, log_line, reconstruct, resolve_input
from .rendezvous import (
    HalfFiles,
    RendezvousResult,
    half_files,
    publish_lock,
    release_lock,
    remove_earlier_files,
    wait_for_partner,
)
from .settings import RelionCorrectionSettings, closed_gates
from .settle import RECORD_SUFFIX, SettleRecord, is_settled, missing_change
from .watchdog import RelionWatch

__all__ = ["MODEL_SUFFIX", "RelionCorrection", "trained_iterations"]

#: What follows the job name in the name of a half's model file.
MODEL_SUFFIX = "_spisonet.pt"


def _match_radial_amplitude(
    volume: np.ndarray, reference: np.ndarray, max_shell: float
) -> np.ndarray:
    """Scale each Fourier shell s <= max_shell of ``volume`` so its mean |F| equals the
    reference's; shells beyond are left as they are (float32)."""
    n = volume.shape[0]
    shells, weights = rfft_shells(n)
    fv = np.fft.rfftn(volume.astype(np.float64))
    av = _shell_mean_amplitude(fv, shells, weights)
    ar = _shell_mean_amplitude(np.fft.rfftn(reference.astype(np.float64)), shells, weights)
    scale = np.ones(av.size)
    ok = (np.arange(av.size) <= max_shell) & (av > 1e-12 * max(float(av.max()), 1e-300))
    scale[ok] = ar[ok] / av[ok]
    return _apply_radial(fv, scale, shells, n).astype(np.float32)


@dataclass(frozen=True)
class _Gates:
    """RELION's healpix order and current resolution, against the two starts."""

    order: int | None
    order_source: str
    start_healpix: int
    resolution: float
    start_resolution: float
    # iterations of this refinement in which the network already ran (closed_gates'
    # held_open)
    trained: tuple[int, ...] = ()

    @property
    def closed(self) -> list[str]:
        """What keeps the gates closed (empty when both are open)."""
        return list(
            closed_gates(
                self.order,
                self.resolution,
                self.start_healpix,
                self.start_resolution,
                held_open=bool(self.trained),
            )
        )

    def values(self) -> str:
        """Both values against their starts, with where each came from."""
        if self.order is None:
            healpix = f"healpix order unknown ({self.order_source}; start {self.start_healpix})"
        else:
            sign = ">=" if self.order >= self.start_healpix else "<"
            healpix = (
                f"healpix order {self.order} {sign} start {self.start_healpix} "
                f"({self.order_source})"
            )
        if math.isfinite(self.resolution):
            sign = "<" if self.resolution < self.start_resolution else ">="
            res = (
                f"resolution {self.resolution:.2f} Å {sign} start "
                f"{self.start_resolution:g} Å (rlnGoldStandardFsc)"
            )
        else:
            res = f"resolution unknown (no rlnGoldStandardFsc; start {self.start_resolution:g} Å)"
        if self.trained and not self.resolution < self.start_resolution:
            res += f", held open (the network ran in iteration {_ranges(list(self.trained))})"
        return f"{healpix}, {res}"

    def __str__(self) -> str:
        if self.closed:
            return f"gate closed ({' and '.join(self.closed)}): {self.values()}"
        return f"gates open: {self.values()}"


def _network_map(result: Any) -> np.ndarray:
    """The network's map of a one-network :func:`correct_anisotropy` result."""
    return result.filtered[0] if result.filtered is not None else result.corrected[0]


def _ranges(numbers: list[int]) -> str:
    """Sorted integers as runs: [3, 5, 6, 7] -> "3, 5-7"."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def trained_iterations(folder: Path, jn: JobName) -> list[int]:
    """Iterations before ``jn``'s of its run (root, class or body) that left a half's model
    file in ``folder``: those in which the network was trained."""
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return []
    found = set()
    for name in names:
        other = parse_run_file(name)
        if (
            other is not None
            and other.root == jn.root
            and other.half is not None
            and (other.kind, other.number) == (jn.kind, jn.number)
            and other.suffix == MODEL_SUFFIX
            and other.iteration < jn.iteration
        ):
            found.add(other.iteration)
    return sorted(found)


def _unsupported_layout(folder: Path, jn: JobName) -> str | None:
    """Why RELION's map is kept for a job that is not one of an auto-refine's (None when it
    is one): the correction pairs the two halves of one consensus map, so multi-body
    bodies (their own masks and many maps per iteration) and 3D classification (no
    independent halves) keep RELION's map."""
    only = "keeps RELION's map: only 3D auto-refine is corrected"
    if jn.layout == "body":
        return f"multi-body refinement (body {jn.number}) {only}"
    if jn.layout == "class":
        return f"3D classification (class {jn.number}) {only}"
    if jn.layout == "joined" and not run_has_halves(folder, jn.root):
        return f"3D classification (no half maps in this run) {only}"
    return None


class RelionCorrection:
    """The misalignment correction, called by
    :func:`~spisonet.relion.runner.run_external_reconstruct` for each half of each
    iteration (one process per half, both at the same time).

    Per call: the last joined iteration and closed gates keep RELION's map (the reason is
    logged). Otherwise each half reconstructs its data without the Wiener term
    (unregularised), shares it with the other half through
    :func:`~spisonet.relion.rendezvous.wait_for_partner`, computes the 3D FSC of the two,
    whitens and FSC-weights its own map (optional), trains its own network on its own half
    (independent networks: the halves stay independent, as RELION's gold standard needs),
    continuing the previous iteration's model, and returns the network output low-passed
    to the current resolution, with RELION's own map's radial amplitudes, and
    (``keep_measured``) RELION's own Fourier coefficients wherever the data were measured
    (:func:`spisonet.weights.measured_weight`), so that the network only fills the
    missing cone. Returns None to keep RELION's map; ``summary`` is the call's one line
    (gates with their values, whether the network ran and why not, steps, seconds), set
    also when the call raises; every step goes to ``spisonet_relion.log``. ``watch``
    (default: the process that started this one, see :mod:`.watchdog`) stops a half
    within seconds once RELION is gone.
    """

    def __init__(
        self, settings: RelionCorrectionSettings | None = None, watch: RelionWatch | None = None
    ) -> None:
        self.settings = settings if settings is not None else RelionCorrectionSettings()
        self.watch = watch if watch is not None else RelionWatch()
        self.summary = ""
        self._gates: _Gates | None = None
        self._steps = 0
        self._t0 = time.perf_counter()

    def _log(self, job: ExternalReconstructJob, message: str) -> None:
        log_line(job.star_path, f"{job.name}: {message}", echo=False)

    def _line(self, outcome: str, t0: float | None = None) -> str:
        """The call's one line: the gates (when read), ``outcome``, steps and seconds."""
        seconds = time.perf_counter() - (self._t0 if t0 is None else t0)
        head = f"{self._gates}; " if self._gates is not None else ""
        return f"{head}{outcome}; {self._steps} steps, {seconds:.1f} s"

    def _keep(self, job: ExternalReconstructJob, reason: str) -> None:
        """Keep RELION's map; the call's line with ``reason`` goes to ``summary`` (the
        runner logs it)."""
        self.summary = self._line(reason)
        return None

    def _progress(self, stage: str, done: float, total: float, info: Any = None) -> None:
        """The progress callback of the 3D FSC, training and prediction: checks that RELION
        is still there (between shells, steps, tiles) and counts the training steps."""
        self.watch.check()
        if stage == "train":
            self._steps = int(done)

    def __call__(
        self, job: ExternalReconstructJob, plain: np.ndarray, pixel_size: float
    ) -> np.ndarray | None:
        """The corrected (box, box, box) float32 map, or None to keep ``plain``."""
        self.summary = ""
        self._gates, self._steps, self._t0 = None, 0, time.perf_counter()
        jn = parse_job_name(job.name)
        if jn is None:
            self.summary = f"{job.name} does not follow RELION's iteration naming"
            return None
        unsupported = _unsupported_layout(job.star_path.parent, jn)
        if unsupported is not None:
            return self._keep(job, unsupported)
        remove_earlier_files(job.star_path.parent, jn)
        if jn.half is None:
            return self._last_iteration(job, jn, pixel_size)
        if jn.half not in (1, 2):
            self.summary = f"half {jn.half}: only halves 1 and 2 are paired"
            return None
        folder = job.star_path.parent
        own, other = half_files(folder, job.name), half_files(folder, jn.name(half=3 - jn.half))
        # RELION gone: this iteration's rendezvous files and this half's model are dead
        # weight that would only confuse a rerun
        files = (own.lock, own.unreg, other.lock, other.unreg, folder / f"{job.name}{MODEL_SUFFIX}")
        with self.watch.watching(job.star_path, job.name, files):
            try:
                return self._correct(job, jn, own, other, plain, pixel_size)
            except Exception as exc:  # the runner logs it; the line still says how far we got
                self.summary = self._line(f"correction failed ({type(exc).__name__})")
                raise

    def _correct(
        self,
        job: ExternalReconstructJob,
        jn: JobName,
        own: HalfFiles,
        other: HalfFiles,
        plain: np.ndarray,
        pixel_size: float,
    ) -> np.ndarray | None:
        """Share this half, meet the other, train: one half of one iteration."""
        t0 = self._t0
        shared = self._share_own_half(job, own, pixel_size)
        if isinstance(shared, str):
            return self._keep(job, shared)
        unreg, res = shared
        t_unreg = time.perf_counter() - t0
        meet = self._meet(job, other)
        self._log(
            job,
            f"unregularised reconstruction {t_unreg:.1f} s; waited {meet.waited:.2f} s for "
            f"half {3 - jn.half}: {meet.reason}",
        )
        if meet.volume is None:
            return self._keep(job, f"network not run: {meet.reason}")
        if meet.volume.shape != unreg.shape:
            raise MapShapeError(
                f"the other half's map has shape {meet.volume.shape}, this one {unreg.shape}"
            )
        return self._train(job, jn, unreg, meet.volume, plain, pixel_size, res, t0)

    def _last_iteration(self, job: ExternalReconstructJob, jn: JobName, pixel_size: float) -> None:
        """The joined iteration keeps RELION's map; say whether the network ever ran."""
        self._gates = self._read_gates(job, pixel_size)
        trained = trained_iterations(job.star_path.parent, jn)
        if trained:
            n = len(trained)
            return self._keep(
                job,
                "last joined iteration keeps RELION's map; the network was trained in "
                f"{n} iteration{'s' if n > 1 else ''} of this refinement ({_ranges(trained)})",
            )
        if self._gates.closed:
            why = (
                f"gates never opened ({self._gates.values()}); lower start_resolution / "
                "start_healpix (docs/relion.md)"
            )
        else:
            why = (
                f"the gates were open at the end ({self._gates.values()}) but no iteration "
                "trained it: see the earlier lines of this log"
            )
        log_line(job.star_path, f"{job.name}: the network never ran in this refinement: {why}")
        return self._keep(
            job,
            "last joined iteration keeps RELION's map; the network never ran in this refinement",
        )

    # -- gates and rendezvous

    def _read_gates(self, job: ExternalReconstructJob, pixel_size: float) -> _Gates:
        """RELION's healpix order (the run's sampling STAR) and current resolution (the
        job's FSC column) against the settings' starts."""
        s = self.settings
        order, order_src = healpix_order_of_run(job.star_path)
        res = current_resolution(job, pixel_size)
        jn = parse_job_name(job.name)
        trained = tuple(trained_iterations(job.star_path.parent, jn)) if jn else ()
        return _Gates(order, order_src, s.start_healpix, res, s.start_resolution, trained)

    def _share_own_half(
        self, job: ExternalReconstructJob, own: HalfFiles, pixel_size: float
    ) -> tuple[np.ndarray, float] | str:
        """Publish the lock, check the gates, write the unregularised map, release.

        Returns (the unregularised map, the current resolution in Å), or, when a gate is
        closed, what the call's line says of the network (the gates go to ``_gates``). The
        lock is published before the gates are read, so that the other half waits for this
        one's decision instead of giving up early.
        """
        with contextlib.suppress(OSError):
            own.unreg.unlink()  # stale, from an interrupted earlier run
        fd = publish_lock(own.lock)
        try:
            self._gates = self._read_gates(job, pixel_size)
            if self._gates.closed:
                return "network not run"
            unreg = reconstruct(job, wiener=False)
            write_map(own.unreg, unreg, voxel_size=pixel_size)
            return unreg, self._gates.resolution
        finally:
            release_lock(fd)

    def _meet(self, job: ExternalReconstructJob, other: HalfFiles) -> RendezvousResult:
        """Wait for the other half's map; then delete its files (only this half reads them)."""
        not_before = job.star_path.stat().st_mtime - 60.0
        meet = wait_for_partner(
            other.lock,
            other.unreg,
            not_before=not_before,
            timeout=self.settings.wait_timeout,
            check=self.watch.check,
        )
        with contextlib.suppress(OSError):
            other.lock.unlink()
        if meet.volume is not None:
            with contextlib.suppress(OSError):
                other.unreg.unlink()
        return meet

    # -- the training step

    def _mask(self, folder: Path, jn: JobName, voxel: float, n: int) -> np.ndarray | None:
        """A soft sphere of RELION's particle diameter (``_optimiser.star``), else None."""
        optimiser = newest_iteration_file(folder, jn, "_optimiser.star", before=True)
        diameter = positive_number(
            read_star_value(optimiser, "rlnParticleDiameter") if optimiser else None
        )
        if diameter is None:
            return None
        radius = min(0.5 * diameter / voxel, n / 2 - 1)
        return spherical_mask(n, radius, soft_edge_voxels=min(5.0, n / 8))

    def _network_input(
        self,
        own: np.ndarray,
        curve: np.ndarray,
        voxel: float,
        mask: np.ndarray | None,
        limit: float,
    ) -> tuple[np.ndarray, list[str]]:
        """This half's map whitened and FSC-weighted as the settings ask, and what was done."""
        s = self.settings
        x = own
        steps = []
        if s.whitening and s.whitening_low > limit:
            x = whiten(x, voxel, mask, low_res=s.whitening_low, high_res=limit)
            steps.append(f"whitened {s.whitening_low:g}-{limit:.1f} Å")
        if s.fsc_weighting:
            x = fsc_weight(x, curve, "relion")
            steps.append("FSC-weighted")
        return x, steps

    def _training_settings(
        self, n: int, voxel: float, limit: float
    ) -> tuple[str, CorrectionSettings]:
        """(the preset used, its settings with this step's overrides) for an n³ box."""
        s = self.settings
        preset, _ = resolve_preset(s.preset)
        overrides: dict[str, object] = {
            "epochs": s.epochs,
            "alpha": s.alpha,
            "beta": s.beta,
            "acc_batches": s.acc_batches,
            "limit_res": limit if n * voxel / limit >= 1 else None,
            # one network per half, continued from iteration to iteration (one model file)
            "ensemble": 1,
        }
        cfg = preset_settings(preset, **overrides)
        if cfg.cube_size > n:  # a small box: the largest cube the network's depth allows
            mult = 2 ** (len(cfg.widths) - 1)
            cfg = preset_settings(preset, **overrides, cube_size=(n // mult) * mult)
        return preset, cfg

    def _train(
        self,
        job: ExternalReconstructJob,
        jn: JobName,
        own: np.ndarray,
        other: np.ndarray,
        plain: np.ndarray,
        voxel: float,
        res: float,
        t0: float,
    ) -> np.ndarray | None:
        """Train this half's network on its own map and return the corrected map."""
        from ..nn.train import set_cpu_threads

        s = self.settings
        n = own.shape[0]
        folder = job.star_path.parent
        half1, half2 = (own, other) if jn.half == 1 else (other, own)
        mask = self._mask(folder, jn, voxel, n)
        t = time.perf_counter()
        limit = max(res, 2.0 * voxel)
        f3d = fsc3d(
            half1, half2, voxel_size=voxel, mask=mask, limit_res=limit, progress=self._progress
        ).volume
        curve, _ = fsc_curve(half1, half2, mask)
        t_fsc = time.perf_counter() - t
        x, steps = self._network_input(own, curve, voxel, mask, limit)
        preset, cfg = self._training_settings(n, voxel, limit)
        # the other half map trains in the other process: each takes half the cores
        threads = s.threads or max(1, (os.cpu_count() or 2) // 2)
        set_cpu_threads(threads)
        model = folder / f"{job.name}_spisonet.pt"
        previous = None
        if not s.retrain_each_iter:
            tail = f"_half{jn.half}_{jn.kind}{jn.number}_spisonet.pt"
            previous = newest_iteration_file(folder, jn, tail, before=True)
        if previous is not None:
            self._log(job, f"continuing the model {previous.name}")
        elif cfg.epochs == 0:
            return self._keep(
                job, "network not run: epochs 0 and no previous model, nothing to predict with"
            )
        else:
            self._log(job, "training a new model" + (" (retrain each iteration)" if
                      s.retrain_each_iter else ""))  # fmt: skip
        self._log(
            job,
            f"training: preset {preset}, {cfg.epochs} epochs, cube {cfg.cube_size}, "
            f"{cfg.n_subvolume} cubes, limit {limit:.2f} Å, {threads} threads, "
            f"{', '.join(steps) or 'no whitening/weighting'}; independent network for half "
            f"{jn.half}" + (" (beta unused: no Noise2Noise pair)" if s.beta is not None else ""),
        )
        full_steps = cfg.epochs * -(-cfg.n_subvolume // cfg.batch_size)
        cfg, settled = self._settled_settings(job, jn, cfg, previous)
        run = partial(
            correct_anisotropy,
            x,
            None,
            fsc3d_volume=f3d,
            mask=mask,
            voxel_size=voxel,
            pretrained=previous,
            progress=self._progress,
            trust=False,  # one more prediction per iteration; RELION's log has the gates
        )
        t = time.perf_counter()
        before, t_before = None, 0.0
        if previous is not None and s.settle_change > 0 and cfg.epochs > 0:
            before = _network_map(run(settings=replace(cfg, epochs=0)))
            t_before = time.perf_counter() - t
        result = run(settings=cfg, checkpoints=(model,))
        t_train = time.perf_counter() - t - t_before
        self._steps = int(result.train[0].steps)
        net = _network_map(result)
        # where the data were measured: both the settle record and the output need it
        measured = (
            measured_weight(f3d, half1, half2, mask)
            if s.keep_measured or s.settle_change > 0
            else None
        )
        if s.settle_change > 0:
            assert measured is not None
            self._record_settling(job, before, net, measured, voxel, limit, full_steps)
        out, kept = self._finish(job, jn, net, plain, measured, voxel, limit)
        loss = result.histories[0].get("loss") if result.histories else None
        loss_text = f", loss {loss[-1]:.4g}" if loss else ""
        self._log(
            job,
            f"3D FSC {t_fsc:.1f} s, "
            + (f"previous model's prediction {t_before:.1f} s, " if before is not None else "")
            + f"training {t_train:.1f} s ({result.train[0].steps} "
            f"steps on {result.train[0].device}{loss_text}); output low-passed "
            f"to {limit:.2f} Å, radial amplitudes of RELION's map"
            + kept
            + (", RELION's map beyond" if s.keep_highres else "")
            + f"; model -> {model.name}",
        )
        on = f"{t_train:.1f} s on {result.train[0].device}"
        if not self._steps and previous is not None:  # epochs 0: the model only predicts
            how = f"network not trained (epochs 0): predicted with {previous.name} in {on}"
        else:
            start = f"continuing {previous.name}" if previous is not None else "a new model"
            how = f"network trained: {cfg.epochs} epochs in {on}, {start}"
            if settled:
                how += f" (settled: {self._steps} of {full_steps} steps)"
        self.summary = self._line(
            f"{how}; output "
            + ("with RELION's map beyond " if s.keep_highres else "low-passed to ")
            + f"{limit:.1f} Å",
            t0,
        )
        return out

    def _settled_settings(
        self,
        job: ExternalReconstructJob,
        jn: JobName,
        cfg: CorrectionSettings,
        previous: Path | None,
    ) -> tuple[CorrectionSettings, bool]:
        """``cfg`` with ``settled_fraction`` of its cubes (so of its steps) when the
        previous call's record says the network has settled; and whether it had."""
        s = self.settings
        if previous is None or s.settle_change <= 0 or cfg.epochs == 0:
            return cfg, False
        record_path = previous.with_name(previous.name[: -len(MODEL_SUFFIX)] + RECORD_SUFFIX)
        record = SettleRecord.read(record_path)
        if not is_settled(record, s.settle_change):
            return cfg, False
        assert record is not None and record.full_change is not None
        cubes = max(cfg.batch_size, round(cfg.n_subvolume * s.settled_fraction))
        self._log(
            job,
            f"settled: the last training changed the missing cone by {record.full_change:.3f} "
            f"(scaled to a full iteration) < {s.settle_change:g}; training "
            f"{cubes} of {cfg.n_subvolume} cubes",
        )
        return replace(cfg, n_subvolume=cubes), True

    def _record_settling(
        self,
        job: ExternalReconstructJob,
        before: np.ndarray | None,
        after: np.ndarray,
        measured: np.ndarray,
        voxel: float,
        limit: float,
        full_steps: int,
    ) -> None:
        """How much this call's training changed the network's missing-cone content,
        left beside the model for the next call (:mod:`.settle`)."""
        change = None
        if before is not None:
            change = missing_change(before, after, measured, after.shape[0] * voxel / limit)
            self._log(job, f"training changed the missing cone by {change:.3f} (relative)")
        record = SettleRecord(change=change, steps=self._steps, full_steps=full_steps)
        record.write(job.star_path.parent / f"{job.name}{RECORD_SUFFIX}")

    def _finish(
        self,
        job: ExternalReconstructJob,
        jn: JobName,
        net: np.ndarray,
        plain: np.ndarray,
        measured: np.ndarray | None,
        voxel: float,
        limit: float,
    ) -> tuple[np.ndarray, str]:
        """The network's map low-passed to ``limit`` Å with RELION's radial amplitudes and
        what the settings keep of RELION's map (``measured``: the measured weight of
        :func:`spisonet.weights.measured_weight`, needed with ``keep_measured``); and the
        log text of what was kept."""
        s = self.settings
        n = net.shape[0]
        out = lowpass(net, limit, voxel, falloff=3)
        out = _match_radial_amplitude(out, plain, n * voxel / limit)
        plain_low = lowpass(plain, limit, voxel, falloff=3)
        kept = ""
        if s.keep_measured:
            if measured is None:
                raise ValueError("keep_measured needs the measured weight")
            out = fourier_blend(out, plain_low, measured)
            inside = frequency_radius(n) <= n * voxel / limit
            share = 100 * float(np.mean(measured[inside] > 0.5))
            kept = (
                f", RELION's map kept where measured (weight > 0.5 in {share:.0f} % of the "
                f"sphere up to {limit:.1f} Å)"
            )
        if s.keep_highres:  # RELION's map beyond the current resolution, the same soft edge
            out = out + (plain - plain_low)
        if s.keep_lowres:
            out = self._keep_lowres(job, jn, out, voxel)
        return out, kept

    def _keep_lowres(
        self, job: ExternalReconstructJob, jn: JobName, volume: np.ndarray, voxel: float
    ) -> np.ndarray:
        """Take the content below ``--ini_high`` from the initial reference (``--ref``)."""
        folder = job.star_path.parent
        optimiser = newest_iteration_file(folder, jn, "_optimiser.star", before=True)
        if optimiser is None:
            raise SpisonetError("ISONET_KEEP_LOWRES: no _optimiser.star beside the job")
        ref = optimiser_command_option(optimiser, "--ref")
        ini_high = optimiser_command_option(optimiser, "--ini_high")
        if ref is None or positive_number(ini_high) is None:
            raise SpisonetError(
                f"ISONET_KEEP_LOWRES: --ref or --ini_high not found in {optimiser.name}'s "
                "command line"
            )
        path = resolve_input(ref, job.star_path)
        reference = read_map(path, voxel_size=voxel).data  # sampled like the map
        if reference.shape != volume.shape:
            raise MapShapeError(
                f"ISONET_KEEP_LOWRES: {path} has shape {reference.shape}, the map {volume.shape}"
            )
        self._log(job, f"kept the content below {float(ini_high):g} Å from {path.name}")
        return combine_map(reference, volume, float(ini_high), voxel)
