"""Study reports for model-based searchers: predicted against observed values with the 95 %
band (and its coverage), and parameter relevance from the GP's length-scales; and the figures
of every report, checked on their matplotlib objects: learning curves and parameters."""

from __future__ import annotations

import math

import pytest

import medtune
from medtune.report import (
    calibration_figure,
    learning_curves_figure,
    model_calibration,
    model_relevance,
    parameters_figure,
    write_report,
)
from medtune.search.space import SearchSpace
from medtune.study import RunOptions, StudyStore, run_study
from medtune.study.store import Execution


def _model(mean: float, std: float, relevance: dict[str, float] | None = None) -> dict:
    return {"mean": mean, "std": std, "acquisition": 0.1, "observations": 4,
            "relevance": relevance if relevance is not None else {"x": 2.0, "y": 0.5}}


def _add(store: StudyStore, tag: dict, value: float | None, config: dict | None = None) -> int:
    """One finished trial: COMPLETE with ``value``, or FAIL when ``value`` is None."""
    trial_id = store.create_trial(suggestion_id=store.count(), config=config or {"x": 0.1},
                                  seed=0, tag=tag)
    if value is None:
        store.fail_trial(trial_id, "exception", "ValueError: diverged")
    else:
        store.complete_trial(trial_id, value)
    return trial_id


def _model_study(path, direction: str = "minimize") -> StudyStore:
    """Two random trials, then five model trials (3 inside the band, 1 outside, 1 failed)
    and a Hyperband-style trial without a model. Values are in the study's units, predictions
    in the searcher's (told) units: the negated value for a maximize study."""
    sign = -1.0 if direction == "maximize" else 1.0
    store = StudyStore.create(path, direction=direction)
    _add(store, {"model": None}, sign * 3.0)
    _add(store, {"model": None}, sign * 2.0)
    _add(store, {"model": _model(1.0, 0.5)}, sign * 1.2)  # inside
    _add(store, {"model": _model(1.0, 0.1)}, sign * 2.0)  # outside (10 std away)
    _add(store, {"model": _model(0.5, 0.2)}, None)  # failed: not compared
    _add(store, {"bracket": 0, "rung": 1}, sign * 0.9)  # no model key at all
    _add(store, {"model": _model(0.8, 0.3, {"x": 1.0, "y": 4.0, "z": 0.0})}, sign * 0.7)
    _add(store, {"model": _model(0.6, 0.1)}, sign * 0.75)  # inside
    return store


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_calibration_counts_the_observed_values_inside_the_band(tmp_path, direction):
    sign = -1.0 if direction == "maximize" else 1.0
    with _model_study(tmp_path / "s.sqlite", direction) as store:
        trials = sorted(store.trials(), key=lambda t: t.completion_order)
        calibration = model_calibration(trials, store.direction)
    assert calibration["predictions"] == 5
    assert calibration["compared"] == 4  # the failed trial is skipped
    assert calibration["inside"] == 3
    assert calibration["coverage"] == pytest.approx(0.75)
    points = calibration["points"]
    assert [p["position"] for p in points] == [3, 4, 5, 7, 8]
    assert points[2]["observed"] is None
    # predictions come back in the objective's units
    assert [p["mean"] for p in points] == pytest.approx(
        [sign * m for m in (1.0, 1.0, 0.5, 0.8, 0.6)])
    assert [p["observed"] for p in points if p["observed"] is not None] == pytest.approx(
        [sign * 1.2, sign * 2.0, sign * 0.7, sign * 0.75])
    assert all(math.isfinite(p["mean"]) and math.isfinite(p["std"]) for p in points)


def test_malformed_predictions_and_no_model_are_ignored(tmp_path):
    with StudyStore.create(tmp_path / "s.sqlite") as store:
        for tag in ({"model": None}, {}, {"model": {"mean": 1.0}},
                    {"model": {"mean": 1.0, "std": -0.5}}, {"model": {"mean": "1", "std": 1.0}},
                    {"model": {"mean": True, "std": 1.0}}, {"model": [1.0, 2.0]}):
            _add(store, tag, 1.0)
        calibration = model_calibration(store.trials(), "minimize")
        assert model_relevance(store.trials()) is None
    assert calibration == {"predictions": 0, "compared": 0, "inside": 0, "coverage": None,
                           "points": []}
    with pytest.raises(ValueError, match="direction"):
        model_calibration([], "max")


def test_relevance_comes_from_the_latest_model_normalised_and_sorted(tmp_path):
    with _model_study(tmp_path / "s.sqlite") as store:
        relevance = model_relevance(store.trials())
        # the latest model trial is the last one (id 8), with the default relevance
        assert relevance == {"trial": 8, "observations": 4, "relevance": {"x": 1.0, "y": 0.25}}
        assert list(relevance["relevance"]) == ["x", "y"]
        earlier = [t for t in store.trials() if t.id <= 7]
        relevance = model_relevance(earlier)
    assert relevance["trial"] == 7
    assert relevance["relevance"] == {"y": 1.0, "x": 0.25, "z": 0.0}
    assert list(relevance["relevance"]) == ["y", "x", "z"]


def test_report_shows_the_model_plots_with_their_captions(tmp_path):
    _model_study(tmp_path / "s.sqlite").close()
    page = write_report(tmp_path / "s.sqlite", tmp_path / "report").read_text()
    for name in ("model.png", "relevance.png"):
        assert (tmp_path / "report" / name).stat().st_size > 1000
        assert f'src="{name}"' in page
    assert "<h2>Model</h2>" in page
    assert "3 of 4 observed values (75%) lie inside the band" in page
    assert "1 predicted trial(s) failed or were pruned" in page
    assert "inverse length-scale" in page and "(ARD)" in page
    assert page.count("<figcaption>") == 2
    assert "nan" not in page.lower().replace("nanoseconds", "")


def test_few_predictions_show_only_the_relevance(tmp_path):
    with StudyStore.create(tmp_path / "s.sqlite") as store:
        _add(store, {"model": None}, 1.0)
        _add(store, {"model": _model(1.0, 0.5)}, 1.1)
        _add(store, {"model": _model(1.0, 0.5)}, 1.1)
    page = write_report(tmp_path / "s.sqlite", tmp_path / "report").read_text()
    assert "model.png" not in page and not (tmp_path / "report" / "model.png").exists()
    assert 'src="relevance.png"' in page


@pytest.mark.parametrize("tags", [
    [{"model": None}] * 4,  # random initial suggestions only
    [{"bracket": 0, "rung": r} for r in (0, 0, 1, 0)],  # hyperband
    [{}] * 4,  # grid, random
])
def test_studies_without_model_tags_have_no_model_section(tmp_path, tags):
    with StudyStore.create(tmp_path / "s.sqlite") as store:
        for i, tag in enumerate(tags):
            _add(store, tag, None if i == 2 else float(i), {"x": 0.1 * i})
    page = write_report(tmp_path / "s.sqlite", tmp_path / "report").read_text()
    assert "<h2>Model</h2>" not in page and "<figure>" not in page
    assert not (tmp_path / "report" / "model.png").exists()
    assert not (tmp_path / "report" / "relevance.png").exists()
    assert 'src="best_by_trial.png"' in page


def _peak(config, resource, seed, report):
    """Negative everywhere, so a prediction in the searcher's (negated) units would show."""
    return -1.0 - (config["x"] - 0.3) ** 2 - 0.05 * config["y"] - (
        0.2 if config["kind"] == "a" else 0.0)


def test_bayes_study_report_has_the_model_and_relevance_plots(tmp_path):
    space = SearchSpace.from_dict({
        "x": {"type": "float", "low": -1.0, "high": 1.0},
        "y": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
        "kind": {"type": "categorical", "choices": ["a", "b"]},
    })
    with StudyStore.create(tmp_path / "bo.sqlite", direction="maximize", seed=0) as store:
        searcher = medtune.create("searcher", "bayes", space=space, seed=store.seed,
                                  direction=store.direction, n_initial=4,
                                  refit_every=4, restarts=0, candidates=128,
                                  local_candidates=32, refine_steps=10)
        run_study(store, searcher, _peak, RunOptions(n_trials=12, progress=False))
        trials = sorted(store.trials(), key=lambda t: t.completion_order)
        calibration = model_calibration(trials, store.direction)
        relevance = model_relevance(trials)
    assert calibration["predictions"] == calibration["compared"] == 8
    assert [p["position"] for p in calibration["points"]] == list(range(5, 13))
    assert all(p["mean"] < 0 for p in calibration["points"])  # objective units, not -value
    assert 0.0 <= calibration["coverage"] <= 1.0
    assert set(relevance["relevance"]) == {"x", "y", "kind"}
    assert max(relevance["relevance"].values()) == 1.0
    page = write_report(tmp_path / "bo.sqlite").read_text()
    report = tmp_path / "bo_report"
    assert (report / "model.png").stat().st_size > 1000
    assert (report / "relevance.png").stat().st_size > 1000
    assert f"{calibration['inside']} of 8 observed values" in page
    assert 'src="model.png"' in page and 'src="relevance.png"' in page


SPACE = SearchSpace.from_dict({
    "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
    "width": {"type": "ordinal", "values": [4, 8, 16]},
    "loss": {"type": "categorical", "choices": ["dice", "glf", "tversky"]},
})


def _curves_study(path, with_loss: bool = True) -> list:
    """Hyperband-like trials (1, 1, 3 and 9 epochs); the last one fails after 2 epochs."""
    with StudyStore.create(path, direction="maximize") as store:
        for i, (epochs, loss, width) in enumerate([(1, "dice", 4), (1, "glf", 16), (3, "glf", 8),
                                                   (9, "tversky", 16), (2, "dice", 8)]):
            config = {"lr": 0.01 * (i + 1), "width": width, **({"loss": loss} if with_loss else {})}
            trial = store.create_trial(suggestion_id=i, config=config, seed=i, resource=epochs)
            curve = tuple((float(e), 0.1 * e + 0.01 * i) for e in range(1, epochs + 1))
            if i == 4:
                store.fail_trial(trial, "exception", "ValueError: diverged",
                                 Execution(intermediate=curve))
            else:
                store.complete_trial(trial, curve[-1][1], Execution(intermediate=curve))
        return sorted(store.trials(), key=lambda t: t.completion_order)


def test_learning_curves_are_coloured_by_the_loss_and_show_one_epoch_trials(tmp_path):
    trials = _curves_study(tmp_path / "s.sqlite")
    fig = learning_curves_figure(trials, SPACE)
    ax = fig.axes[0]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["loss = dice", "loss = glf", "loss = tversky", "failed trial"]
    lines = [line for line in ax.get_lines() if len(line.get_xdata())]
    assert len(lines) == 5
    one_epoch = [line for line in lines if len(line.get_xdata()) == 1]
    assert len(one_epoch) == 2 and all(line.get_marker() == "o" for line in one_epoch)
    assert len({line.get_color() for line in lines}) == 3  # one colour per loss
    assert [line.get_linestyle() for line in lines].count(":") == 1  # the failed trial


def test_learning_curves_without_a_categorical_parameter_are_coloured_by_trial(tmp_path):
    trials = _curves_study(tmp_path / "s.sqlite", with_loss=False)
    space = SearchSpace.from_dict({"lr": {"type": "float", "low": 1e-3, "high": 1e-1},
                                   "width": {"type": "int", "low": 4, "high": 16}})
    fig = learning_curves_figure(trials, space)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "trial (in completion order)"
    colours = {tuple(line.get_color()) for line in fig.axes[0].get_lines()
               if len(line.get_xdata())}
    assert len(colours) == 5
    # without a space (a study not made from a configuration) only text values colour curves
    assert len(learning_curves_figure(trials).axes) == 2


def test_ordinal_and_categorical_parameters_are_drawn_as_categories(tmp_path):
    trials = _curves_study(tmp_path / "s.sqlite")
    fig = parameters_figure(trials, SPACE)
    axes = {ax.get_xlabel(): ax for ax in fig.axes}
    width = axes["width"]
    assert [t.get_text() for t in width.get_xticklabels()] == ["4", "8", "16"]
    assert list(width.get_xticks()) == [0, 1, 2]  # evenly spaced, in the space's order
    widths = sorted(width.collections[0].get_offsets()[:, 0])
    assert widths == [0.0, 1.0, 2.0, 2.0]  # 4, 8, 16, 16 (the failed trial is not shown)
    assert [t.get_text() for t in axes["loss"].get_xticklabels()] == ["dice", "glf", "tversky"]
    assert axes["lr"].get_xscale() == "log"  # the space says so, though lr spans 4x only
    # without a space, integers taking few values are categories too, sorted by value
    axes = {ax.get_xlabel(): ax for ax in parameters_figure(trials).axes}
    assert [t.get_text() for t in axes["width"].get_xticklabels()] == ["4", "8", "16"]


def test_the_model_plot_shows_the_whole_band(tmp_path):
    """A Dice-like objective near 1 whose model is unsure: the band reaches far above 1 and
    below the observations; the value axis holds all of it."""
    with StudyStore.create(tmp_path / "s.sqlite", direction="maximize") as store:
        for i, (mean, std, value) in enumerate([(-0.9, 0.2, 0.95), (-0.8, 0.3, 0.85),
                                                (-0.95, 0.15, 0.97)]):
            _add(store, {"model": _model(mean, std)}, value)
        trials = sorted(store.trials(), key=lambda t: t.completion_order)
    calibration = model_calibration(trials, "maximize")
    ax = calibration_figure(calibration, trials).axes[0]
    low, high = ax.get_ylim()
    assert high >= 0.8 + 1.96 * 0.3 and low <= 0.8 - 1.96 * 0.3
