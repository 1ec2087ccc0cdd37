"""The README's first section is what a newcomer copies: it must install the right torch on
a CPU machine and on a GPU machine, and CI must run the test command it shows."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"
TEST_COMMAND = 'pip install -e ".[dev]" && python -m pytest'


def first_section_commands() -> list[str]:
    """The fenced bash blocks of the README's first ``##`` section, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## ")[1]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def installs_the_project(command: str) -> bool:
    return re.search(r"pip install (-e )?(\.|\"\.\[dev\]\")(\s|$)", command) is not None


def test_first_install_command_is_the_cpu_one() -> None:
    blocks = [b for b in first_section_commands() if installs_the_project(b)]
    assert blocks, "no install command in the README's first section"
    first = blocks[0]
    assert "\n" not in first  # one line to copy
    assert CPU_INDEX in first, first
    assert first.index(CPU_INDEX) < first.index("pip install .")  # torch's CPU build first
    # then the GPU path: plain pip (PyPI's default, CUDA build of torch)
    assert any(CPU_INDEX not in b and "pip install ." in b for b in blocks[1:]), blocks


def test_ci_runs_the_readme_test_command() -> None:
    tests = [b for b in first_section_commands() if "pytest" in b]
    assert len(tests) == 2, tests  # CPU machine, GPU machine
    cpu, gpu = tests
    assert cpu == f"pip install torch {CPU_INDEX} && {TEST_COMMAND}"
    assert gpu == TEST_COMMAND
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert TEST_COMMAND in ci.splitlines()  # run verbatim, on a line of its own
    assert "torch==2.13.0" in ci  # CI's CPU torch comes from local disk (no index there)
