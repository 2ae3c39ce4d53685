import subprocess
import sys
from pathlib import Path

import pytest

from ntire.__main__ import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_every_command_has_help_and_run():
    for name, module in COMMANDS.items():
        assert module.HELP and not module.HELP.endswith("\n"), name
        assert callable(module.add_arguments) and callable(module.run), name


def test_every_command_module_is_in_the_table_and_in_the_readme():
    # A module added to ntire/commands/ but not to the table (or the README's command list) fails here.
    modules = sorted(p.stem for p in (REPO / "ntire" / "commands").glob("*.py") if p.stem != "__init__")
    assert sorted(COMMANDS) == modules
    assert all(COMMANDS[name].__name__ == f"ntire.commands.{name}" for name in COMMANDS)
    readme = (REPO / "README.md").read_text()
    assert [name for name in COMMANDS if f"ntire {name}" not in readme] == []


@pytest.mark.parametrize("name", list(COMMANDS))
def test_subcommand_help_exits_cleanly(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert name in capsys.readouterr().out


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "ntire", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ntire ")
