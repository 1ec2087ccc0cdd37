"""spisonet.io in production: outputs readable by colleagues (umask), header fidelity
(nxstart, axis order, voxel size) and refusing bad files before allocating what their
header announces."""

from __future__ import annotations

import gzip
import os
import stat
import tracemalloc
import warnings

import mrcfile
import numpy as np
import pytest
from typer.testing import CliRunner

from spisonet.cli import app
from spisonet.errors import InvalidValueError, MapFormatError, VoxelSizeError
from spisonet.io import read_map, write_map
from spisonet.simulate import make_molecule, simulate_half_maps

runner = CliRunner()


def _mrc(path, data, voxel=1.5, *, crs=(1, 2, 3), starts=(0, 0, 0), origin=(0.0, 0.0, 0.0)):
    """Write ``data`` as stored (sections, rows, columns) with the given header fields."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(data, dtype=np.float32))
            mrc.voxel_size = voxel
            h = mrc.header
            h.mapc, h.mapr, h.maps = crs
            h.nxstart, h.nystart, h.nzstart = starts
            h.origin.x, h.origin.y, h.origin.z = origin
    return path


def _asymmetric(n=6):
    """A cube whose every transpose differs: value = 100 z + 10 y + x."""
    k = np.arange(n, dtype=np.float32)
    return 100 * k[:, None, None] + 10 * k[None, :, None] + k[None, None, :]


def _header_starts(path):
    with mrcfile.open(path, permissive=True) as mrc:
        h = mrc.header
        return (
            (int(h.nxstart), int(h.nystart), int(h.nzstart)),
            (int(h.mapc), int(h.mapr), int(h.maps)),
            (float(h.origin.x), float(h.origin.y), float(h.origin.z)),
            float(mrc.voxel_size.x),
        )


# --------------------------------------------------------------------------- 2. modes
@pytest.fixture(params=[(0o022, 0o644), (0o027, 0o640)], ids=["umask022", "umask027"])
def umask(request):
    old = os.umask(request.param[0])
    yield request.param[1]
    os.umask(old)


def test_every_output_gets_the_mode_open_would_give(umask, tmp_path):
    from spisonet.nn.train import save_checkpoint
    from spisonet.report import loss_figure, write_json

    (tmp_path / "old.mrc").write_bytes(b"")
    os.chmod(tmp_path / "old.mrc", 0o600)  # replacing a private file still follows umask
    outputs = [
        write_map(tmp_path / "old.mrc", np.zeros((4, 4, 4)), voxel_size=1.0),
        write_map(tmp_path / "sub" / "map.mrc", np.zeros((4, 4, 4)), voxel_size=1.0),
        save_checkpoint(tmp_path / "model.pt", {"epoch": 1}),
    ]
    write_json(tmp_path / "r.json", {"a": 1})
    loss_figure({"loss": [3.0, 2.0, 1.0]}, tmp_path / "loss.png")
    outputs += [tmp_path / "r.json", tmp_path / "loss.png"]
    for p in outputs:
        assert stat.S_IMODE(os.stat(p).st_mode) == umask, p.name


# --------------------------------------------------------------------------- 4. header
def test_nstart_and_origin_survive_read_and_write(tmp_path):
    src = _mrc(tmp_path / "in.mrc", _asymmetric(), starts=(-16, -15, -14), origin=(3.0, 4.0, 5.0))
    m = read_map(src)
    assert m.nstart == (-16, -15, -14)
    write_map(tmp_path / "copy.mrc", m)
    write_map(tmp_path / "derived.mrc", m.data * 2, like=m)
    for name in ("copy.mrc", "derived.mrc"):
        starts, crs, origin, voxel = _header_starts(tmp_path / name)
        assert starts == (-16, -15, -14) and crs == (1, 2, 3)
        assert origin == pytest.approx((3.0, 4.0, 5.0)) and voxel == pytest.approx(1.5)


@pytest.mark.parametrize("command", ["whitening", "combine-map"])
def test_cli_outputs_carry_the_input_header(tmp_path, command):
    gt = make_molecule(24, 1.5, seed=0)
    src = _mrc(tmp_path / "in.mrc", gt, starts=(-12, -12, -12), origin=(1.0, 2.0, 3.0))
    out = tmp_path / "out.mrc"
    args = (
        ["whitening", src, "-o", out, "--low-res", 10, "--high-res", 4]
        if command == "whitening"
        else [command, src, src, out, 8]
    )
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    starts, _, origin, voxel = _header_starts(out)
    assert starts == (-12, -12, -12)
    assert origin == pytest.approx((1.0, 2.0, 3.0)) and voxel == pytest.approx(1.5)


@pytest.mark.parametrize("crs", [(3, 2, 1), (2, 3, 1), (3, 1, 2), (2, 1, 3)])
def test_any_axis_order_reads_as_z_y_x(tmp_path, crs):
    a = _asymmetric()
    starts_xyz = (-3, -5, -7)
    mapc, mapr, maps = crs
    # stored axes are (section, row, column) = physical (maps, mapr, mapc); a's are z, y, x
    stored = a.transpose(3 - maps, 3 - mapr, 3 - mapc)
    file_starts = (starts_xyz[mapc - 1], starts_xyz[mapr - 1], starts_xyz[maps - 1])
    std = read_map(_mrc(tmp_path / "std.mrc", a, starts=starts_xyz))
    got = read_map(_mrc(tmp_path / "perm.mrc", stored, crs=crs, starts=file_starts))
    np.testing.assert_array_equal(got.data, std.data)
    assert got.nstart == std.nstart == starts_xyz
    write_map(tmp_path / "out.mrc", got)  # written back in the standard order
    assert _header_starts(tmp_path / "out.mrc")[:2] == (starts_xyz, (1, 2, 3))
    np.testing.assert_array_equal(read_map(tmp_path / "out.mrc").data, a)


def test_axis_order_that_is_no_permutation(tmp_path):
    _mrc(tmp_path / "bad.mrc", _asymmetric(), crs=(1, 1, 3))
    with pytest.raises(MapFormatError, match=r"bad\.mrc: header axis order .* = 1,1,3"):
        read_map(tmp_path / "bad.mrc")


@pytest.mark.parametrize("voxel", [0.0, -1.2, float("nan")])
def test_unusable_voxel_size_is_an_error_naming_apix(tmp_path, voxel):
    path = _mrc(tmp_path / "v.mrc", _asymmetric(), voxel=1.0)
    with mrcfile.open(path, mode="r+") as mrc:
        mrc.header.cella.x = voxel * mrc.header.mx
    with pytest.raises(VoxelSizeError, match=r"v\.mrc: the header's voxel size is .*--apix <Å>"):
        read_map(path)
    assert read_map(path, voxel_size=0.8).voxel_size == pytest.approx(0.8)
    with pytest.raises(InvalidValueError, match="positive"):
        read_map(path, voxel_size=0.0)


@pytest.fixture(scope="module")
def headerless_halves(tmp_path_factory):
    d = simulate_half_maps(make_molecule(24, 1.5, seed=0), 1.5, "uniform", 300, seed=0)
    folder = tmp_path_factory.mktemp("halves")
    paths = []
    for name in ("half1", "half2"):
        paths.append(_mrc(folder / f"{name}.mrc", getattr(d, name), voxel=0.0))
    return paths


@pytest.mark.parametrize("command", ["whitening", "fsc3d"])
def test_cli_apix_for_maps_without_voxel_size(headerless_halves, tmp_path, command):
    h1, h2 = headerless_halves
    out = tmp_path / "out.mrc"
    args = (
        ["whitening", h1, "-o", out, "--low-res", 10, "--high-res", 4]
        if command == "whitening"
        else ["fsc3d", h1, h2, "-o", out]
    )
    result = runner.invoke(app, [str(a) for a in args])
    assert isinstance(result.exception, VoxelSizeError), result.output
    assert "--apix" in str(result.exception) and not out.exists()
    result = runner.invoke(app, [str(a) for a in [*args, "--apix", 1.4]])
    assert result.exit_code == 0, (result.output, result.exception)
    assert read_map(out).voxel_size == pytest.approx(1.4)


# --------------------------------------------------------------------------- 6. memory
def _refused_cheaply(path, match):
    """read_map refuses ``path`` with ``match`` while allocating under 32 MiB."""
    tracemalloc.start()
    try:
        with pytest.raises(MapFormatError, match=match):
            read_map(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"{peak / 2**20:.0f} MiB allocated before refusing"


def test_text_file_named_mrc(tmp_path):
    path = tmp_path / "notes.mrc"
    path.write_text("this is a lab notebook, not a map\n" * 3000)
    _refused_cheaply(path, r"notes\.mrc: not an MRC map \(no 'MAP ' signature")


def test_file_shorter_than_a_header(tmp_path):
    path = tmp_path / "tiny.mrc"
    path.write_bytes(b"MAP 123456789")
    _refused_cheaply(path, r"tiny\.mrc: not an MRC map: the file holds 13 bytes, less than")


def _patched(tmp_path, name, *, order="<", compress=False, **words):
    """A valid 8³ float32 map in byte order ``order`` with header words replaced."""
    data = _asymmetric(8)
    path = _mrc(tmp_path / "src.mrc", data)
    raw = bytearray(path.read_bytes())
    header = np.frombuffer(raw[:1024], dtype="<i4").copy()
    index = {"nx": 0, "ny": 1, "nz": 2, "mode": 3, "nsymbt": 23}
    for key, value in words.items():
        header[index[key]] = value
    head = bytearray(header.astype(f"{order}i4").tobytes())
    # text fields (MAP id, labels) keep their bytes; floats follow the byte order
    floats = np.frombuffer(raw[:1024], dtype="<f4").astype(f"{order}f4").tobytes()
    for w in (*range(10, 16), *range(19, 22), *range(24, 52), 54):
        head[4 * w : 4 * w + 4] = floats[4 * w : 4 * w + 4]
    head[208:212] = b"MAP "
    head[212:216] = bytes((0x44, 0x44, 0, 0)) if order == "<" else bytes((0x11, 0x11, 0, 0))
    head[224:1024] = raw[224:1024]  # labels
    blob = bytes(head) + data.astype(f"{order}f4").tobytes()
    out = tmp_path / name
    out.write_bytes(gzip.compress(blob) if compress else blob)
    return out, data


@pytest.mark.parametrize(
    ("order", "compress"), [("<", False), (">", False), ("<", True)], ids=["le", "be", "gzip"]
)
def test_huge_extended_header_and_dimensions(tmp_path, order, compress):
    ok, data = _patched(tmp_path, "ok.mrc", order=order, compress=compress)
    np.testing.assert_array_equal(read_map(ok).data, data)  # the pre-check reads it right
    ext, _ = _patched(tmp_path, "ext.mrc", order=order, compress=compress, nsymbt=2**31 - 1)
    _refused_cheaply(ext, r"ext\.mrc: .*2147483647-byte extended header, the .*holds 3072 bytes")
    big, _ = _patched(tmp_path, "big.mrc", order=order, compress=compress, nx=512, ny=512, nz=512)
    _refused_cheaply(
        big,
        r"big\.mrc: truncated MRC file: header says 512×512×512 float32 voxels after a "
        r"0-byte extended header \(512\.0 MiB\), the .*holds 3072 bytes",
    )
    neg, _ = _patched(tmp_path, "neg.mrc", order=order, compress=compress, nsymbt=-8)
    _refused_cheaply(neg, r"neg\.mrc: .*-8-byte extended header")


@pytest.mark.parametrize(("mode", "name"), [(101, "packed 4-bit"), (3, "complex int16")])
def test_unsupported_modes_are_named(tmp_path, mode, name):
    path, _ = _patched(tmp_path, "m.mrc", mode=mode)
    _refused_cheaply(path, rf"m\.mrc: MRC mode {mode} \({name}\) is not supported")
