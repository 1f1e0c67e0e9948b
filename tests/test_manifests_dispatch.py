"""The three command lines dispatch alike: a registry dict of subcommand -> (module, description)."""

from importlib import import_module

import pytest

import generation.cli
import manifests.cli
import prep.cli
from manifests.dispatch import dispatch

CLIS = [prep.cli, manifests.cli, generation.cli]


@pytest.mark.parametrize("cli", CLIS, ids=lambda c: c.PROG)
def test_every_registered_subcommand_is_a_module_with_help_arguments_and_run(cli, capsys):
    for name, (module_name, description) in cli.COMMANDS.items():
        module = import_module(module_name)
        assert module.HELP and description, name
        assert callable(module.add_arguments) and callable(module.run), name
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {cli.PROG} [--version] [-q | -v] COMMAND") and all(
        name in out for name in cli.COMMANDS
    )
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


def test_options_may_come_before_the_subcommand(tmp_path, monkeypatch, capsys):
    (tmp_path / "echo_command.py").write_text(
        'HELP = "echo"\n'
        "def add_arguments(p):\n    p.add_argument('word')\n"
        "def run(args):\n    print(args.loud, args.word)\n    return 4\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    commands = {"echo": ("echo_command", "print a word")}

    def common(parser):
        parser.add_argument("--loud", action="store_true")

    assert dispatch("tool", commands, ["--loud", "echo", "hi"], common) == 4
    assert dispatch("tool", commands, ["echo", "hi"], common) == 4
    assert capsys.readouterr().out == "True hi\nFalse hi\n"
    assert dispatch("tool", commands, ["--loud"], common) == 2
    assert "no command given" in capsys.readouterr().err
