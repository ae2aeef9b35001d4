"""The README's commands are the ones the code accepts: every fenced shell command is parsed by
the parser that would run it (``ocp-graphpar``'s, fairchem's, the Makefile's targets), so a stale
flag, sub-command, target or config path fails here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def shell_commands(text: str) -> list[str]:
    """Commands of the ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


COMMANDS = shell_commands(README.read_text())


def test_the_readme_is_short_and_has_commands():
    assert len(README.read_text().splitlines()) <= 200
    assert {command.split()[0] for command in COMMANDS} >= {"make", "fairchem", "ocp-graphpar"}


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("ocp-graphpar ")])
def test_ocp_graphpar_commands_parse(command):
    from ocp_graphpar.cli import build_parser

    args = build_parser().parse_args(shlex.split(command)[1:])  # SystemExit on a stale flag
    for value in vars(args).values():
        if isinstance(value, Path) and str(value).startswith("configs/"):
            assert (ROOT / value).is_file(), value


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("fairchem ")])
def test_fairchem_commands_parse(command):
    from fairchem.core.common.flags import flags

    args, overrides = flags.get_parser().parse_known_args(shlex.split(command)[1:])
    assert (ROOT / args.config_yml).is_file(), args.config_yml
    for override in overrides:  # fairchem reads the rest as config overrides: --a.b=value
        assert re.fullmatch(r"--[a-z_]+(\.[a-z_]+)+=\S+", override), override


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("make ")])
def test_make_commands_name_real_targets_and_variables(command):
    makefile = (ROOT / "Makefile").read_text()
    target, *assignments = shlex.split(command)[1:]
    assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), target
    for assignment in assignments:
        name = assignment.split("=", 1)[0]
        assert re.search(rf"\b{name}\b", makefile), name


def test_every_config_the_readme_names_exists():
    for match in set(re.findall(r"configs/[\w/{},.*-]+\.yml", README.read_text())):
        expanded = _expand_braces(match)
        for path in expanded:
            assert list(ROOT.glob(path)), path


def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [p for option in match.group(1).split(",") for p in _expand_braces(head + option + tail)]
