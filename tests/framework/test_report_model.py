"""Study reports for model-based searchers: predicted against observed values with the 95 %
band (and its coverage), and parameter relevance from the GP's length-scales."""

from __future__ import annotations

import math

import pytest

import medtune
from medtune.report import model_calibration, model_relevance, write_report
from medtune.search.space import SearchSpace
from medtune.study import StudyStore, run_study


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
        searcher = medtune.create("searcher", "bayes", space=space, seed=store.seed, n_initial=4,
                                  refit_every=4, restarts=0, candidates=128,
                                  local_candidates=32, refine_steps=10)
        run_study(store, searcher, _peak, n_trials=12, progress=False)
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


def test_plot_titles_carry_the_whole_configuration_wrapped():
    """The trajectories plot names its trial's configuration: every key, floats short, wrapped
    into lines; only a configuration longer than the lines allowed is cut, and says so."""
    from medtune.report import config_lines

    config = {"learning_rate": 0.000123456, "loss": "glf", "strategy": "deterministic",
              "weight_decay": 1.5e-05, "width": 16, "batch_size": 8, "epochs": 12,
              "alpha_p_bounds": [0.05, 20.0]}
    lines = config_lines(config, width=60)
    text = " ".join(lines)
    assert len(lines) == 3 and all(len(line) <= 60 for line in lines)
    assert not lines[-1].endswith("...")
    for key in config:
        assert f"{key}=" in text
    assert "learning_rate=0.000123" in text and "weight_decay=1.5e-05" in text
    many = config_lines({f"parameter_{i}": i for i in range(40)}, width=60, lines=3)
    assert len(many) == 3 and many[-1].endswith("...")
