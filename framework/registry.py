"""The plugin registry: discovers plugins through the ``medtune`` entry-point group.

Built-in plugins are registered through that same group (see ``pyproject.toml``), so a
third-party package adds ``[project.entry-points.medtune] name = "pkg.module"`` and nothing
else. A plugin that fails to import is reported once, with its distribution, and skipped;
everything else keeps working.
"""

from __future__ import annotations

import difflib
import importlib.metadata as metadata
import threading
import traceback
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from medtune import hookspecs
from medtune.errors import PluginError, UnknownPluginError

ENTRY_POINT_GROUP = "medtune"

#: plugin kind -> hook that provides it
KINDS: dict[str, str] = {
    "loss": "medtune_losses",
    "searcher": "medtune_searchers",
    "pruner": "medtune_pruners",
    "task": "medtune_tasks",
    "transfer_layer": "medtune_transfer_layers",
    "deformation": "medtune_deformations",
    "dataset": "medtune_datasets",
    "quality_estimator": "medtune_quality_estimators",
    "metric": "medtune_metrics",
    "command": "medtune_commands",
}


class PluginWarning(UserWarning):
    """A plugin could not be loaded or misbehaved; it is skipped."""


@dataclass
class PluginInfo:
    """One registered plugin: its entry-point name, distribution, and problems if any."""

    name: str
    distribution: str
    version: str
    problems: list[str] = field(default_factory=list)
    module: Any = None

    @property
    def label(self) -> str:
        return f"plugin {self.name!r} from distribution {self.distribution!r} {self.version}"

    @property
    def broken(self) -> bool:
        return bool(self.problems)


@dataclass(frozen=True)
class Entry:
    """One named factory of one kind, with the plugin that provides it."""

    kind: str
    name: str
    factory: Any
    plugin: PluginInfo


class Registry:
    """Loads plugins lazily and answers ``create`` / ``available`` for every kind."""

    def __init__(self, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
        self._entry_points = entry_points
        self._lock = threading.RLock()
        self._manager: pluggy.PluginManager | None = None
        self._plugins: dict[str, PluginInfo] = {}
        self._entries: dict[str, dict[str, list[Entry]]] = {}
        self._kernel_impls: list[Entry] | None = None

    # -- discovery -------------------------------------------------------------------------
    def _ensure_loaded(self) -> pluggy.PluginManager:
        with self._lock:
            if self._manager is None:
                manager = pluggy.PluginManager(hookspecs.PROJECT)
                manager.add_hookspecs(hookspecs)
                self._manager = manager
                eps = self._entry_points
                if eps is None:
                    eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
                for ep in sorted(eps, key=lambda e: e.name):
                    self._load_entry_point(ep)
            return self._manager

    def _load_entry_point(self, ep: metadata.EntryPoint) -> None:
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            distribution=dist.metadata["Name"] if dist is not None else "<unknown>",
            version=dist.version if dist is not None else "?",
        )
        key = self._unique_key(ep.name)
        self._plugins[key] = info
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            self._report(info, f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}")
            return
        self._register(module, key, info)

    def _unique_key(self, name: str) -> str:
        key, i = name, 1
        while key in self._plugins:
            i += 1
            key = f"{name}#{i}"
        return key

    def _register(self, module: Any, key: str, info: PluginInfo) -> None:
        info.module = module
        try:
            assert self._manager is not None
            self._manager.register(module, name=key)
        except Exception as exc:
            self._report(info, f"could not be registered: {type(exc).__name__}: {exc}")

    def register(self, plugin: Any, name: str, distribution: str = "<in-process>") -> None:
        """Register a plugin object from the running process (notebooks, tests, scripts)."""
        with self._lock:
            self._ensure_loaded()
            if name in self._plugins:
                raise PluginError(f"a plugin named {name!r} is already registered; pick another name")
            info = PluginInfo(name=name, distribution=distribution, version="-")
            self._plugins[name] = info
            self._register(plugin, name, info)
            self._entries.clear()
            self._kernel_impls = None

    @staticmethod
    def _report(info: PluginInfo, problem: str) -> None:
        info.problems.append(problem)
        warnings.warn(
            f"medtune: {info.label} {problem}; it is skipped (see `medtune plugins`).",
            PluginWarning,
            stacklevel=4,
        )

    # -- queries ---------------------------------------------------------------------------
    def plugins(self) -> list[PluginInfo]:
        """Every plugin found, broken ones included, after collecting every kind once."""
        for kind in KINDS:
            self._collect(kind)
        self._collect_kernel_impls()
        return list(self._plugins.values())

    def _call_hook(self, hook_name: str) -> list[tuple[PluginInfo, Mapping[str, Any]]]:
        manager = self._ensure_loaded()
        results = []
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            info = self._plugins[impl.plugin_name]
            try:
                provided = impl.function()
            except Exception as exc:
                tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
                self._report(info, f"raised in hook {hook_name}: {tb}")
                continue
            if provided is None:
                continue
            if not isinstance(provided, Mapping) or not all(isinstance(k, str) for k in provided):
                self._report(
                    info,
                    f"returned {type(provided).__name__} from hook {hook_name}; "
                    "expected a mapping {name: factory}",
                )
                continue
            results.append((info, provided))
        return results

    def _collect(self, kind: str) -> dict[str, list[Entry]]:
        with self._lock:
            if kind not in self._entries:
                entries: dict[str, list[Entry]] = {}
                for info, provided in self._call_hook(KINDS[kind]):
                    for name, factory in provided.items():
                        if not callable(factory):
                            self._report(info, f"gave a non-callable factory for {kind} {name!r}")
                            continue
                        entries.setdefault(name, []).append(Entry(kind, name, factory, info))
                self._entries[kind] = entries
            return self._entries[kind]

    def _collect_kernel_impls(self) -> list[Entry]:
        with self._lock:
            if self._kernel_impls is None:
                self._kernel_impls = [
                    Entry("kernel_impl", name, impl, info)
                    for info, provided in self._call_hook("medtune_kernel_impls")
                    for name, impl in provided.items()
                ]
            return self._kernel_impls

    def kernel_impls(self) -> list[Entry]:
        """Kernel implementations contributed through ``medtune_kernel_impls``."""
        return self._collect_kernel_impls()

    def entries(self, kind: str) -> dict[str, list[Entry]]:
        """``{name: [entries]}`` for a kind; more than one entry means a name conflict."""
        _check_kind(kind)
        return self._collect(kind)

    def available(self, kind: str) -> list[str]:
        """Names that can be created for ``kind``, sorted."""
        return sorted(self.entries(kind))

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name``; raises a helpful error if it is unknown or ambiguous."""
        entries = self.entries(kind)
        if name not in entries:
            names = sorted(entries)
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            listing = ", ".join(repr(n) for n in names) or "none installed"
            raise UnknownPluginError(f"no {kind} named {name!r}.{hint} Available: {listing}.")
        found = entries[name]
        if len(found) > 1:
            owners = " and ".join(e.plugin.label for e in found)
            raise PluginError(
                f"{kind} {name!r} is provided by two plugins: {owners}. "
                "Uninstall one of the distributions or ask its author to rename it."
            )
        return found[0]

    def create(self, kind: str, name: str, /, **kwargs: Any) -> Any:
        """Build the ``kind`` plugin called ``name`` with ``kwargs``."""
        return self.get(kind, name).factory(**kwargs)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, list(KINDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownPluginError(
            f"unknown plugin kind {kind!r}.{hint} Kinds: {', '.join(KINDS)}."
        )


_REGISTRY: Registry | None = None
_REGISTRY_LOCK = threading.Lock()


def registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        if _REGISTRY is None:
            _REGISTRY = Registry()
        return _REGISTRY


def reset_registry() -> None:
    """Forget every loaded plugin; the next query discovers them again."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        _REGISTRY = None


def create(kind: str, name: str, /, **kwargs: Any) -> Any:
    """Build a plugin: ``medtune.create("loss", "glf", adaptive="deterministic")``."""
    return registry().create(kind, name, **kwargs)


def available(kind: str) -> list[str]:
    """Names of the installed plugins of ``kind``: ``medtune.available("loss")``."""
    return registry().available(kind)
