"""`--help` of every command in a terminal of 80 and 120 columns: every flag name whole (rich's
option panels cut `--pretrained-model-name-or-path` to `--pretrained-model…` at 80), no line
wider than the terminal, and no command summary cut to `...`."""

from __future__ import annotations

import re

import click
import pytest
import typer
from typer.testing import CliRunner

from alignkit.cli import app


def commands(group: click.Group, path=()):
    """(argv path, click command) for the app itself and every command under it."""
    yield path, group
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


ALL = list(commands(typer.main.get_command(app)))


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("path,command", ALL, ids=[" ".join(p) or "alignkit" for p, _ in ALL])
def test_every_flag_name_is_whole(path, command, width):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(width)}, terminal_width=width)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    for param in command.params:
        if isinstance(param, click.Option):
            for flag in [*param.opts, *param.secondary_opts]:
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (flag, text)
    if isinstance(command, click.Group):
        for name in command.commands:
            line = re.search(rf"^\s+{name}\s.*$", text, re.M)
            assert line and not line.group().endswith("..."), (name, text)  # its summary whole
