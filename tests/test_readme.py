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


# --------------------------------------------------------------------------- the CLI
def _accepted(command) -> set[str]:
    """Every spelling a command accepts, the hidden ones (``--o``) and --help included."""
    names = {"--help", "-h"}
    for p in command.params:
        names |= {*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ())}
        names |= set(getattr(p, "_hidden_opts", ()))
    return names


def _options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


def test_every_documented_command_and_option_exists() -> None:
    """What README.md and docs/cli.md show (both spellings) is what the CLI accepts: the
    options of every ``spisonet COMMAND ...`` written out, and in docs/cli.md every option
    named in a command's section."""
    from typer.main import get_command

    from spisonet.cli import app

    commands = get_command(app).commands
    checked = 0
    for page in ("README.md", "docs/cli.md"):
        text = (ROOT / page).read_text(encoding="utf-8").replace("\\\n", " ")
        # up to the end of the code span or line (shell continuations joined above)
        for name, rest in re.findall(r"spisonet ([a-z][\w-]*)([^`\n]*)", text):
            if name in commands:  # else prose: "spisonet computes ..."
                unknown = _options(rest) - _accepted(commands[name])
                assert not unknown, f"{page}: spisonet {name} has no option {sorted(unknown)}"
                checked += 1
    for section in (ROOT / "docs" / "cli.md").read_text(encoding="utf-8").split("\n## ")[1:]:
        heading, _, body = section.partition("\n")
        names = [n for n in re.findall(r"spisonet ([a-z][\w-]*)", heading) if n in commands]
        if names:
            accepted = set().union(*(_accepted(commands[n]) for n in names))
            unknown = {o for o in _options(body) if o.startswith("--")} - accepted
            assert not unknown, f"docs/cli.md, {heading}: no option {sorted(unknown)}"
            checked += 1
    assert checked > 30, checked


def test_settings_page_is_linked() -> None:
    assert "`docs/settings.md`" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "`docs/settings.md`" in (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
