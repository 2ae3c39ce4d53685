import subprocess
import sys

import pytest

from ntire.__main__ import COMMANDS, build_parser, main


def test_every_command_has_help_and_run():
    for name, module in COMMANDS.items():
        assert module.HELP and not module.HELP.endswith("\n"), name
        assert callable(module.add_arguments) and callable(module.run), name


def test_parser_lists_exactly_the_table():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_subcommand_help_exits_cleanly(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert name in capsys.readouterr().out


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "ntire", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ntire ")
