"""Plugin discovery through entry points: built-ins, third-party, broken and clashing plugins."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import warnings

import pytest
import torch

import medtune
from medtune import hookimpl
from medtune.errors import PluginError, UnknownPluginError
import medtune.registry as registry_module
from medtune.registry import PluginWarning, Registry


def _registry_with(monkeypatch, folders) -> Registry:
    for folder in folders:
        monkeypatch.syspath_prepend(str(folder))
    return Registry()


def test_builtins_come_through_the_entry_point_group():
    eps = importlib.metadata.entry_points(group="medtune")
    builtin = [ep for ep in eps if ep.value == "medtune.plugins.builtin"]
    assert len(builtin) == 1 and builtin[0].dist.metadata["Name"] == "medtune"
    infos = {info.name: info for info in Registry().plugins()}
    assert infos["builtin"].distribution == "medtune" and not infos["builtin"].broken


def test_third_party_plugin_is_found_and_usable(monkeypatch, installed_plugins):
    reg = _registry_with(monkeypatch, [installed_plugins["example_plugin"]])
    assert "soft_jaccard" in reg.available("loss")
    entry = reg.get("loss", "soft_jaccard")
    assert entry.plugin.distribution == "medtune-example-plugin"
    assert entry.plugin.version == "1.0.0"
    loss = reg.create("loss", "soft_jaccard", smooth=0.0)
    pred = torch.tensor([[[0.9, 0.2, 0.6, 0.0]]])
    target = torch.tensor([[[1.0, 0.0, 1.0, 1.0]]])
    tp, fp, fn = 1.5, 0.2, 1.5
    assert loss(pred, target).item() == pytest.approx(1 - tp / (tp + fp + fn), rel=1e-6)


def test_broken_plugin_is_reported_and_the_rest_work(monkeypatch, installed_plugins):
    reg = _registry_with(
        monkeypatch, [installed_plugins["example_plugin"], installed_plugins["broken_plugin"]]
    )
    with pytest.warns(PluginWarning, match="medtune-broken-plugin.*failed to import"):
        infos = {info.name: info for info in reg.plugins()}
    assert infos["broken"].broken
    assert "medtune_dependency_that_does_not_exist" in infos["broken"].problems[0]
    assert not infos["example"].broken
    assert isinstance(reg.create("loss", "soft_jaccard"), torch.nn.Module)


def test_duplicate_names_name_both_distributions(monkeypatch, installed_plugins):
    reg = _registry_with(
        monkeypatch, [installed_plugins["example_plugin"], installed_plugins["duplicate_plugin"]]
    )
    with pytest.raises(PluginError) as err:
        reg.create("loss", "soft_jaccard")
    message = str(err.value)
    assert "medtune-example-plugin" in message and "medtune-duplicate-plugin" in message
    # the clash blocks only that name
    assert isinstance(reg.create("loss", "mean_absolute_error"), torch.nn.Module)


def test_unknown_name_lists_what_exists_and_suggests(monkeypatch, installed_plugins):
    reg = _registry_with(monkeypatch, [installed_plugins["example_plugin"]])
    with pytest.raises(UnknownPluginError) as err:
        reg.create("loss", "soft_jacard")
    message = str(err.value)
    assert "Did you mean 'soft_jaccard'?" in message
    assert "'soft_jaccard'" in message.split("Available:")[1]


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(UnknownPluginError, match="unknown plugin kind 'losses'.*Did you mean 'loss'"):
        medtune.available("losses")


class _RaisingPlugin:
    @hookimpl
    def medtune_losses(self):
        raise RuntimeError("boom")


class _WrongTypePlugin:
    @hookimpl
    def medtune_losses(self):
        return ["not", "a", "mapping"]


class _GoodPlugin:
    @hookimpl
    def medtune_losses(self):
        return {"l1": torch.nn.L1Loss}


def test_faulty_hooks_are_reported_with_their_plugin():
    reg = Registry(entry_points=[])
    reg.register(_RaisingPlugin(), "raising")
    reg.register(_WrongTypePlugin(), "wrong_type")
    reg.register(_GoodPlugin(), "good")
    with pytest.warns(PluginWarning) as record:
        names = reg.available("loss")
    assert names == ["l1"]
    messages = " ".join(str(w.message) for w in record)
    assert "'raising'" in messages and "RuntimeError: boom" in messages
    assert "'wrong_type'" in messages and "expected a mapping" in messages
    with pytest.raises(PluginError, match="already registered"):
        reg.register(_GoodPlugin(), "good")


def test_cli_plugins_shows_third_party_and_broken(installed_plugins):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(installed_plugins["example_plugin"]), str(installed_plugins["broken_plugin"])]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env["COLUMNS"] = "200"
    result = subprocess.run(
        [sys.executable, "-m", "medtune.cli", "plugins"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "soft_jaccard" in out and "medtune-example-plugin" in out
    assert "broken" in out and "medtune-broken-plugin" in out
    assert "medtune_dependency_that_does_not_exist" in out


def test_in_process_registration_is_visible_to_create(monkeypatch):
    reg = Registry(entry_points=[])
    reg.register(_GoodPlugin(), "good")
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    assert isinstance(medtune.create("loss", "l1"), torch.nn.L1Loss)
    assert medtune.available("loss") == ["l1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert medtune.available("searcher") == []
