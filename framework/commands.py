"""The command contract: a subcommand of the ``medtune`` command line, as a plugin of kind
``command``.

A plugin returns ``{name: factory}`` from its ``medtune_commands`` hook; each factory, called
without arguments, builds a :class:`Command` (a subclass is its own factory), and
``medtune NAME ...`` runs it. The registry's key is the subcommand's name. A plugin command
named like a core command (``run``, ``status``, ...) is skipped with a
:class:`~medtune.registry.PluginWarning` naming its plugin, as is one whose factory fails or
does not build a :class:`Command`. A :class:`~medtune.errors.MedtuneError` raised by
:meth:`Command.run` is printed in one line and the command exits with status 2, as for the
core commands.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Collection
from typing import Any, ClassVar

from medtune.registry import PluginWarning, registry


class Command:
    """Base class of a command plugin; subclasses set :attr:`name`, :attr:`help` and
    :meth:`run`, and add their arguments in :meth:`add_arguments`."""

    #: the subcommand's name in messages (the registry's key is the one ``medtune`` uses)
    name: ClassVar[str] = "unnamed"
    #: one line for ``medtune --help``
    help: ClassVar[str] = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's arguments to its own ``parser`` (none by default)."""

    def run(self, args: argparse.Namespace, console: Any) -> int:
        """Do the work with the parsed ``args``, printing to ``console`` (a
        ``rich.console.Console``); return the exit status. Raise
        :class:`~medtune.errors.MedtuneError` for a problem the user can fix."""
        raise NotImplementedError(f"command {self.name!r} does not define run(args, console)")


def plugin_commands(reserved: Collection[str]) -> dict[str, Command]:
    """The installed commands by name, built, leaving out (each with a
    :class:`~medtune.registry.PluginWarning` naming its plugin) a name in ``reserved`` (the
    core commands), a name two plugins provide, and a factory that fails or builds no
    :class:`Command`."""
    commands: dict[str, Command] = {}
    for name, entries in sorted(registry().entries("command").items()):
        owners = " and ".join(entry.plugin.label for entry in entries)
        if name in reserved:
            _skip(f"{owners} provides command {name!r}, a core command of medtune; rename it")
            continue
        if len(entries) > 1:
            _skip(f"command {name!r} is provided by two plugins, {owners}; uninstall one of "
                  "the distributions or ask its author to rename it")
            continue
        try:
            command = entries[0].factory()
        except Exception as exc:  # a broken plugin must not break the command line
            _skip(f"{owners} failed to build command {name!r}: {type(exc).__name__}: {exc}")
            continue
        if not isinstance(command, Command):
            _skip(f"{owners} gave command {name!r} as a {type(command).__name__}, not a "
                  "medtune.commands.Command")
            continue
        commands[name] = command
    return commands


def _skip(problem: str) -> None:
    warnings.warn(f"medtune: {problem}; it is skipped.", PluginWarning, stacklevel=3)
