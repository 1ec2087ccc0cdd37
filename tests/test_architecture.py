"""The layering of the package, as a test (docs/architecture.md draws the same picture).

Walks every module's imports with ``ast`` and fails when

- a module imports a module of a higher layer (at module level or inside a function),
- the module-level imports form a cycle,
- torch is imported outside ``spisonet.nn`` other than lazily (inside a function) in the
  few modules allowed to, or a module outside ``nn`` imports ``spisonet.nn`` at module
  level (that would load torch on ``import spisonet``),
- a numerics or ``nn`` module touches files itself (files belong to ``spisonet.io`` and
  the edges listed in :data:`FILE_EDGES`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spisonet"

#: Layers, lowest first. A module may import its own layer and those below.
LAYERS: dict[str, int] = {
    # 0: the vocabulary every module shares
    "spisonet.errors": 0,
    "spisonet._version": 0,
    "spisonet._compat": 0,
    "spisonet._checks": 0,
    "spisonet._settings": 0,
    "spisonet.progress": 0,
    "spisonet._cube": 0,
    "spisonet.fourier": 0,
    # 1: numerics on arrays, and file formats
    "spisonet.fsc_shells": 1,
    "spisonet.fsc3d": 1,
    "spisonet._fsc3d_kernels": 1,
    "spisonet.anisotropy": 1,
    "spisonet.fsd3d": 1,
    "spisonet.maps": 1,
    "spisonet.masks": 1,
    "spisonet.symmetry": 1,
    "spisonet.weights": 1,
    "spisonet.io": 1,
    "spisonet._outputs": 1,
    # 2: the network, simulations, figures
    "spisonet.nn": 2,
    "spisonet.simulate": 2,
    "spisonet.report": 2,
    # 3: the correction; 4: RELION; 5: the command line and the facade
    "spisonet.correction": 3,
    "spisonet.tomo": 3,
    "spisonet.relion": 4,
    "spisonet.cli": 5,
    "spisonet.__main__": 5,
    "spisonet": 5,
}

#: Modules that may ``import torch`` inside a function (outside ``spisonet.nn``).
LAZY_TORCH = {
    "spisonet.cli.launch",
    "spisonet.cli.reconstruct",
    "spisonet.correction.settings",
    "spisonet.relion.check",  # relion-check's device probe
    "spisonet.tomo.deconv",  # the CTF from torch-ctf
    "spisonet.tomo.simulate",  # torch-fourier-slice, torch-ctf
}

#: Modules that hold numerics only: no file access (reading or writing).
NUMERICS = {
    "spisonet.errors",
    "spisonet._compat",
    "spisonet._version",
    "spisonet._checks",
    "spisonet._settings",
    "spisonet.progress",
    "spisonet._cube",
    "spisonet.fourier",
    "spisonet.fsc_shells",
    "spisonet.fsc3d",
    "spisonet._fsc3d_kernels",
    "spisonet.anisotropy",
    "spisonet.fsd3d",
    "spisonet.maps",
    "spisonet.masks",
    "spisonet.symmetry",
    "spisonet.weights",
    "spisonet.correction.settings",
    "spisonet.correction.pipeline",
    "spisonet.correction.trust",
    "spisonet.correction.evaluate",
    "spisonet.tomo.wedge",
    "spisonet.tomo.deconv",
    "spisonet.tomo.mask",
    "spisonet.tomo.simulate",
    "spisonet.tomo.network",
    "spisonet.relion.backprojector",
    "spisonet.relion.settings",
}

#: The edges where files are read or written besides ``spisonet.io``.
FILE_EDGES = {
    "spisonet.nn.checkpoint",  # model files
    "spisonet._outputs",  # output folders and their lock
    "spisonet.correction.files",  # reconstruct: paths in, files out
    "spisonet.tomo.files",  # spisonet tomo's steps: paths in, files out
}

_FILE_MODULES = {"mrcfile", "starfile", "tempfile", "shutil", "pickle", "gzip"}
_FILE_METHODS = {
    "read_text",
    "write_text",
    "read_bytes",
    "write_bytes",
    "mkdir",
    "unlink",
    "touch",
    "savefig",
    "tofile",
    "fromfile",
}
_FILE_FUNCS = {("np", "load"), ("np", "save"), ("np", "savez"), ("torch", "load")}
_FILE_FUNCS |= {("torch", "save"), ("os", "open"), ("os", "remove"), ("os", "rename")}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        out[_module_name(path)] = ast.parse(path.read_text(), str(path))
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The absolute names a node imports (``from . import x`` gives the submodule x)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level == 0:
        base = node.module or ""
    else:
        pkg = module if _is_package(module) else module.rsplit(".", 1)[0]
        for _ in range(node.level - 1):
            pkg = pkg.rsplit(".", 1)[0]
        base = pkg + ("." + node.module if node.module else "")
    names = []
    for a in node.names:
        sub = f"{base}.{a.name}"
        names.append(sub if sub in MODULES else base)
    return names


def _imports(module: str, tree: ast.Module) -> list[tuple[str, bool, int]]:
    """(imported name, at module level?, line) for every import in the module."""
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            top.add(id(node))
        # `if TYPE_CHECKING:` / try-except at module level also run at import time
        elif isinstance(node, ast.If | ast.Try):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    top.add(id(sub))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for name in _resolve(module, node):
                out.append((name, id(node) in top, node.lineno))
    return out


def _layer(name: str) -> int | None:
    best = None
    for prefix, layer in LAYERS.items():
        if name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return None if best is None else best[1]


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if _layer(m) is None]
    assert not missing, f"add these modules to LAYERS (and docs/architecture.md): {missing}"


def test_no_module_imports_a_higher_layer():
    bad = []
    for module, tree in MODULES.items():
        mine = _layer(module)
        for name, _top, line in _imports(module, tree):
            if not name.startswith("spisonet"):
                continue
            theirs = _layer(name)
            if theirs is not None and mine is not None and theirs > mine:
                bad.append(f"{module}:{line} imports {name} (layer {theirs} > {mine})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_at_module_level():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, tree in MODULES.items():
        for name, top, _ in _imports(module, tree):
            # a package's facade imports its submodules; the submodules' imports of
            # their siblings do not run the facade again, so edges go to the module itself
            if top and name in MODULES and name != module and not module.startswith(name + "."):
                graph[module].add(name)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for nxt in sorted(graph[m]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_torch_only_in_nn_or_lazily():
    bad = []
    for module, tree in MODULES.items():
        if module == "spisonet.nn" or module.startswith("spisonet.nn."):
            continue
        for name, top, line in _imports(module, tree):
            loads_torch = name == "torch" or name.startswith("torch.")
            loads_nn = name == "spisonet.nn" or name.startswith("spisonet.nn.")
            if loads_torch and (top or module not in LAZY_TORCH):
                bad.append(f"{module}:{line} imports {name}")
            if loads_nn and top:
                bad.append(f"{module}:{line} imports {name} at module level (loads torch)")
    assert not bad, "\n".join(bad)


def _file_access(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.append(node.module)
            for n in names:
                if n.split(".")[0] in _FILE_MODULES:
                    found.append(f"line {node.lineno}: imports {n}")
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id == "open":
                found.append(f"line {node.lineno}: open()")
            if isinstance(f, ast.Attribute):
                if f.attr in _FILE_METHODS:
                    found.append(f"line {node.lineno}: .{f.attr}()")
                if isinstance(f.value, ast.Name) and (f.value.id, f.attr) in _FILE_FUNCS:
                    found.append(f"line {node.lineno}: {f.value.id}.{f.attr}()")
                if f.attr == "open" and not (
                    isinstance(f.value, ast.Name) and f.value.id in ("gzip",)
                ):
                    found.append(f"line {node.lineno}: .open()")
    return found


def test_numerics_and_nn_do_not_touch_files():
    bad = []
    for module, tree in MODULES.items():
        in_nn = module == "spisonet.nn" or module.startswith("spisonet.nn.")
        if module in FILE_EDGES or not (module in NUMERICS or in_nn):
            continue
        bad += [f"{module}: {what}" for what in _file_access(tree)]
    assert not bad, "\n".join(bad)


def test_the_file_access_check_finds_file_access():
    """The checker itself: it must see the ways a module could open a file."""
    code = (
        "import mrcfile\nfrom pathlib import Path\n"
        "def f(p):\n    open(p)\n    Path(p).write_text('x')\n    np.save(p, 1)\n"
        "    with Path(p).open() as h:\n        pass\n"
    )
    assert len(_file_access(ast.parse(code))) == 5
    assert _file_access(ast.parse("def f(s):\n    return s.replace('a', 'b')\n")) == []


@pytest.mark.parametrize(
    "module", ["spisonet", "spisonet.correction", "spisonet.relion", "spisonet.cli"]
)
def test_importing_does_not_load_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_facade_names_are_not_module_names():
    import spisonet

    modules = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    clash = sorted(set(spisonet.__all__) & modules)
    assert not clash, f"public names that are also submodule names: {clash}"
