"""Plugin commands (kind ``command``): the command line runs them, reports their errors like its
own, skips those that clash or break; and every installed command meets the contract."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings

import pytest

import medtune.registry as registry_module
from medtune import hookimpl
from medtune.cli import build_parser, main
from medtune.commands import Command, plugin_commands
from medtune.errors import MedtuneError
from medtune.registry import PluginWarning, Registry


def _medtune(installed_plugins, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join([str(installed_plugins["example_plugin"])]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-m", "medtune.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_a_third_party_command_runs_and_reports_its_error_in_one_line(installed_plugins):
    greeted = _medtune(installed_plugins, "greet", "Ada")
    assert greeted.returncode == 0, greeted.stdout + greeted.stderr
    assert greeted.stdout == "Hello, Ada!\n"
    refused = _medtune(installed_plugins, "greet", " ")
    assert refused.returncode == 2
    assert refused.stdout == ("error: greet: the [who] argument is empty; give a name, e.g. "
                              "`medtune greet Ada`\n")
    assert "Traceback" not in refused.stderr
    listed = _medtune(installed_plugins, "--help")
    assert "greet" in listed.stdout and "print a greeting" in listed.stdout


class _Hello(Command):
    name = "hello"
    help = "say hello"

    def add_arguments(self, parser):
        parser.add_argument("--times", type=int, default=1)

    def run(self, args, console):
        if args.times < 1:
            raise MedtuneError("hello: --times must be at least 1")
        console.print(" ".join(["hello"] * args.times))
        return 0


class _Clashing:
    @hookimpl
    def medtune_commands(self):
        def broken():
            raise RuntimeError("no factory today")

        return {"status": _Hello, "hello": _Hello, "broken": broken, "odd": object,
                "twice": _Hello}


class _Second:
    @hookimpl
    def medtune_commands(self):
        return {"twice": _Hello}


@pytest.fixture
def clashing(monkeypatch) -> Registry:
    registry = Registry(entry_points=[])
    registry.register(_Clashing(), "clashing")
    registry.register(_Second(), "second")
    monkeypatch.setattr(registry_module, "_REGISTRY", registry)
    return registry


def test_commands_that_clash_or_break_are_skipped_with_a_warning(clashing, capsys):
    with pytest.warns(PluginWarning) as record:
        parser = build_parser()
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 4, messages
    assert any("plugin 'clashing'" in m and "provides command 'status', a core command of "
               "medtune; rename it; it is skipped" in m for m in messages)
    assert any("failed to build command 'broken': RuntimeError: no factory today" in m
               for m in messages)
    assert any("gave command 'odd' as a object, not a medtune.commands.Command" in m
               for m in messages)
    assert any("command 'twice' is provided by two plugins" in m and "'clashing'" in m
               and "'second'" in m for m in messages)
    assert parser.parse_args(["status", "s.db"]).study == "s.db"  # the core command stays
    with pytest.warns(PluginWarning):
        assert main(["hello", "--times", "2"]) == 0
    assert capsys.readouterr().out == "hello hello\n"
    with pytest.warns(PluginWarning):
        assert main(["hello", "--times", "0"]) == 2
    assert capsys.readouterr().out == "error: hello: --times must be at least 1\n"


def test_medtune_plugins_lists_commands(clashing, capsys):
    with pytest.warns(PluginWarning):
        assert main(["plugins"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "command" in line]
    assert any("hello" in row and "clashing" in row for row in rows), rows


def test_every_installed_command_meets_the_contract(monkeypatch, installed_plugins):
    """Built-in and third-party commands alike: a Command with a one-line help, whose
    arguments fit a parser of their own, and none clashing with a core command or broken."""
    monkeypatch.syspath_prepend(str(installed_plugins["example_plugin"]))
    monkeypatch.setattr(registry_module, "_REGISTRY", Registry())
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        build_parser()
    commands = plugin_commands(reserved=())
    assert "greet" in commands
    for name, command in commands.items():
        assert isinstance(command, Command), name
        assert isinstance(command.help, str) and command.help and "\n" not in command.help, name
        parser = argparse.ArgumentParser(prog=f"medtune {name}")
        command.add_arguments(parser)
        assert parser.format_help()
