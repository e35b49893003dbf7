"""The built-in plugin: registered through the ``medtune`` entry-point group like any other."""

from __future__ import annotations

from medtune.hookspecs import hookimpl
