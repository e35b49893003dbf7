"""Importable objectives and a task plugin that keep artifacts, for the artifact, export and
predict tests (spawned workers, Ray workers and driver subprocesses import them by name)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from medtune.hookspecs import hookimpl
from medtune.study.artifacts import trial_folder
from medtune.tasks import Task


def keeps_weights(config, resource, seed, report):
    """Writes ``weights.txt`` (its x) into its trial folder from a thread it starts, sleeps
    ``MEDTUNE_TEST_SLEEP`` seconds (default 0), then returns x^2; fails (after writing) on
    every index that is 3 modulo 4."""
    written = []
    writer = threading.Thread(target=lambda: written.append(_write(trial_folder(), config)))
    writer.start()
    writer.join()
    time.sleep(float(os.environ.get("MEDTUNE_TEST_SLEEP", "0")))
    if config["index"] % 4 == 3:
        raise ValueError(f"trial index {config['index']} fails after writing")
    return config["x"] ** 2


def _write(folder: Path | None, config) -> Path | None:
    if folder is not None:
        (folder / "weights.txt").write_text(repr(config["x"]))
    return folder


def keeps_nothing(config, resource, seed, report):
    """x^2, without artifacts."""
    return config["x"] ** 2


#: the arguments of every PainterTask.predict call in this process
predictions: list[dict] = []


class PainterTask(Task):
    """Trains by writing its x into ``weights.json`` (and ``fold_0/bias.txt``) in its trial
    folder; predicts by writing, for each input file, its x and ``tta`` into a file of the
    same name. Takes the keys FakeSearcher proposes."""

    name = "painter"
    settings = {"x": 0.0, "index": 0, "seen": 0}

    def train(self, settings, resource, seed, report):
        folder = trial_folder()
        if folder is not None:
            (folder / "weights.json").write_text(json.dumps({"x": settings["x"]}))
            (folder / "fold_0").mkdir()
            (folder / "fold_0" / "bias.txt").write_text(str(settings["index"]))
        return (settings["x"] - 0.3) ** 2

    def predict(self, model_folder, inputs, output, *, labels=None, tta=False, console=None):
        predictions.append({"model_folder": model_folder, "inputs": inputs, "output": output,
                            "labels": labels, "tta": tta})
        x = json.loads((model_folder / "weights.json").read_text())["x"]
        names = sorted(path.name for path in inputs.iterdir())
        for name in names:
            (output / name).write_text(f"{x} {tta}")
        return {"cases": len(names)}


class MuteTask(PainterTask):
    """A painter that cannot predict: the base class's predict."""

    name = "mute"
    predict = Task.predict


class FakeTasks:
    """A plugin with the tasks above."""

    @hookimpl
    def medtune_tasks(self):
        return {"painter": PainterTask, "mute": MuteTask}
