"""The built-in segmentation task trains for real, reports every epoch and draws the lesion Dice
by size of the best trial of each loss and the GLF coefficient trajectories."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import numpy as np
import pytest
import torch

import medtune
from medtune import registry as registry_module
from medtune.errors import MedtuneError
from scipy import stats

from medtune.plugins.losses import GLFLoss
from medtune.plugins.tasks.segmentation import (GLF_LABELS, TRAJECTORY_SERIES, SegmentationTask,
                                                config_lines, lesion_metrics, lesion_scores,
                                                paired_comparison, resolve_loss, slice_metrics,
                                                trajectories_figure)
from medtune.study import RunOptions, StudyStore, TrialState, run_study
from medtune.study.store import Trial
from medtune.tasks import ConfiguredObjective

train_segmentation = SegmentationTask()
TINY = {"train_size": 16, "val_size": 8, "batch_size": 8, "width": 4, "lr": 5e-3}


def test_reports_each_epoch_and_returns_the_last_dice():
    curve = []
    result = train_segmentation(TINY, resource=2, seed=0, report=lambda e, d: curve.append((e, d)))
    assert [epoch for epoch, _ in curve] == [1, 2]
    assert 0.0 <= result["value"] <= 1.0 and result["value"] == curve[-1][1]
    assert {"lesion_dice_small", "lesion_recall_small", "lesion_dice_large"} <= set(result)
    assert {"recall", "dice_lesion_slices", "dice_empty_slices"} <= set(result)
    assert all(0.0 <= result[k] <= 1.0 for k in ("recall", "dice_lesion_slices",
                                                  "dice_empty_slices"))
    assert "glf_alpha_p" not in result  # a plain Dice loss has no coefficients


def test_same_seed_same_result_and_glf_trajectories():
    config = {**TINY, "loss": "glf", "options_by_loss": {"glf": {"adaptive": "deterministic"},
                                                         "dice": {"bogus": 1}}}
    first = train_segmentation(config, 1, seed=3)
    again = train_segmentation(config, 1, seed=3)
    assert first.pop("seconds_per_epoch") > 0 and again.pop("seconds_per_epoch") > 0
    assert first == again
    steps = TINY["train_size"] // TINY["batch_size"]  # one epoch
    for name in TRAJECTORY_SERIES:  # coefficients, Tversky plane and driving metrics per step
        assert len(first[f"glf_{name}"]) == steps, name


def test_a_replicate_fixes_data_and_initialisation_whatever_the_trial_seed():
    config = {**TINY, "train_size": 8, "replicate": 2}
    first, second = (train_segmentation(config, 1, seed=seed) for seed in (0, 5))
    first.pop("seconds_per_epoch"), second.pop("seconds_per_epoch")
    assert first == second
    assert train_segmentation({**TINY, "train_size": 8}, 1, seed=2)["value"] == first["value"]


def test_a_cosine_schedule_anneals_the_rate_over_the_training_steps(monkeypatch):
    rates = []
    original = torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    train_segmentation({**TINY, "schedule": "cosine", "lr": 0.01}, resource=2, seed=0)
    steps = 2 * TINY["train_size"] // TINY["batch_size"]
    expected = [0.005 * (1 + np.cos(np.pi * k / steps)) for k in range(steps)]
    assert rates == pytest.approx(expected)


def test_freeze_reading_reaches_the_glf_through_a_loss_variant(monkeypatch):
    built = []
    original = GLFLoss.__init__

    def recording(self, **options):
        original(self, **options)
        built.append(self)

    monkeypatch.setattr(GLFLoss, "__init__", recording)
    variants = {"glf_caption": {"loss": "glf", "adaptive": "deterministic",
                                "freeze_when": "above"}}
    config = {**TINY, "train_size": 8, "loss": "glf_caption", "loss_variants": variants}
    result = train_segmentation(config, 1, seed=0)
    assert [loss.rules.freeze_when for loss in built] == ["above"]
    assert len(result["glf_alpha_p"]) == 1


def test_exploratory_glf_variant_chooses_coefficients_each_step():
    variants = {"glf_exploratory": {"loss": "glf", "adaptive": "exploratory"}}
    config = {**TINY, "train_size": 8, "loss": "glf_exploratory", "loss_variants": variants}
    result = train_segmentation(config, 1, seed=0)
    assert len(result["glf_alpha_p"]) == 1 and len(result["glf_alpha_n_tversky"]) == 1
    # one exploratory step multiplies each coefficient by 0.9, 1 or 1.1
    assert {round(result[f"glf_{name}"][0], 6) for name in ("alpha_p", "alpha_n", "beta2")} <= {
        0.9, 1.0, 1.1}


def test_loss_variants_resolve_to_a_plugin_and_its_options():
    config = {"loss": "tversky_a03", "loss_options": {"smooth_nr": 0.0},
                          "options_by_loss": {"tversky": {"alpha": 0.5, "batch": True}},
                          "loss_variants": {"tversky_a03": {"loss": "tversky", "alpha": 0.3,
                                                            "beta": 0.7}}}
    assert resolve_loss(config) == ("tversky", {"smooth_nr": 0.0, "alpha": 0.3, "beta": 0.7,
                                                  "batch": True})
    assert resolve_loss({"loss": "dice", "options_by_loss": {"glf": {"beta2": 2}}}) == (
        "dice", {})


def test_slice_metrics_on_hand_made_masks():
    labels = np.zeros((4, 8, 8), dtype=np.uint8)
    predictions = np.zeros((4, 8, 8), dtype=bool)
    labels[0, :2, :2] = 1             # 4 lesion px, 2 found, 2 false positives: Dice 0.5
    predictions[0, 0, :4] = True
    labels[1, 4:, 4:] = 1             # 16 lesion px, all found exactly: Dice 1
    predictions[1, 4:, 4:] = True
    predictions[2, 7, 7] = True       # empty slice with one false positive: Dice 0
    metrics = slice_metrics(predictions, labels)   # slice 3: empty, nothing predicted: Dice 1
    assert metrics == {"precision": 18 / 21, "recall": 18 / 20, "dice_lesion_slices": 0.75,
                       "dice_empty_slices": 0.5}
    nothing = slice_metrics(np.zeros((1, 8, 8), dtype=bool), labels[:1])
    assert nothing == {"recall": 0.0, "dice_lesion_slices": 0.0}  # precision undefined
    assert slice_metrics(predictions[2:], labels[2:]) == {"precision": 0.0,
                                                          "dice_empty_slices": 0.5}
    with pytest.raises(MedtuneError, match="same shape"):
        slice_metrics(predictions[:, :4], labels)


def test_lesion_scores_by_component_and_size_bin():
    label = np.zeros((40, 40), dtype=np.int64)
    label[2:6, 2:6] = 1        # 16 px: found exactly
    label[20:34, 20:34] = 1    # 196 px: half found, plus 14 false pixels next to it
    label[10:13, 30:33] = 1    # 9 px: missed
    prediction = np.zeros((40, 40), dtype=bool)
    prediction[2:6, 2:6] = True
    prediction[20:27, 19:34] = True
    scores = sorted(lesion_scores(prediction, label))
    assert [(area, hit) for area, _, hit in scores] == [(9, False), (16, True), (196, True)]
    assert scores[1][1] == 1.0 and scores[0][1] == 0.0
    assert scores[2][1] == 2 * 98 / (105 + 196)
    metrics = lesion_metrics(scores)
    assert metrics == {"lesion_dice_small": 0.5, "lesion_recall_small": 0.5,
                       "lesion_dice_medium": scores[2][1]}


def test_learns_on_the_phantom():
    config = {**TINY, "train_size": 48, "width": 8, "loss": "dice", "lr": 1e-2}
    curve = []
    train_segmentation(config, resource=6, seed=0, report=lambda e, d: curve.append(d))
    assert max(curve) > 0.2, curve  # an untrained network scores about 0


@pytest.mark.parametrize("config,message", [
    ({"learning_rate": 1e-3}, "unknown setting"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of"),
    ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
    ({"width": 0}, "width must be > 0"),
    ({"options_by_loss": {"glf": 3}}, "options_by_loss must map loss names"),
    ({"loss_variants": {"t03": {"alpha": 0.3}}}, "loss_variants must map variant names"),
    ({"replicate": -1}, "replicate must be >= 0"),
    ({"schedule": "step"}, "schedule must be one of"),
    ({"replicate": 1.5}, "replicate must be a whole number"),
])
def test_bad_settings(config, message):
    with pytest.raises(MedtuneError, match=message):
        train_segmentation(config, resource=1)


class _NaNLoss(torch.nn.Module):
    def __init__(self, **options):
        super().__init__()

    def forward(self, input, target):
        return input.mean() * float("nan")


class _NaNLossPlugin:
    @medtune.hookimpl
    def medtune_losses(self):
        return {"nan_loss": _NaNLoss}


def test_a_loss_returning_nan_fails_the_trial_not_the_study(tmp_path, monkeypatch):
    reg = registry_module.Registry()  # the installed plugins, and this one, for this test only
    reg.register(_NaNLossPlugin(), "nan_loss_plugin")
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    objective = ConfiguredObjective("segmentation", {**TINY, "train_size": 8, "val_size": 8})
    store = StudyStore.create(tmp_path / "s.db", direction="maximize")
    searcher = medtune.create("searcher", "grid", direction="maximize",
                              space={"loss": {"type": "categorical", "choices": ["nan_loss", "dice"]}})
    with store:
        summary = run_study(store, searcher, objective, RunOptions(progress=False))
        states = {t.config["loss"]: (t.state, t.failure_reason) for t in store.trials()}
    assert summary.n_complete == 1 and summary.n_failed == 1
    assert states["nan_loss"][0] is TrialState.FAIL and states["nan_loss"][1].value == "nan"
    assert states["dice"][0] is TrialState.COMPLETE


def _trial(trial_id: int, loss: str, value: float, resource: float | None, metrics: dict,
           **config) -> Trial:
    return Trial(id=trial_id, suggestion_id=trial_id, config={"loss": loss, **config},
                 resource=resource, tag={},
                 seed=trial_id, state=TrialState.COMPLETE, value=value, failure_reason=None, traceback=None,
                 started=datetime.now(), finished=None, duration=None, host=None, worker_pid=None,
                 completion_order=trial_id, asked_after=0, requeued_from=None, told_value=None,
                 told_failed=None, metrics=metrics)


def test_the_figure_shows_the_best_trial_of_each_loss_at_its_largest_budget(tmp_path):
    bins = {"lesion_dice_small": 0.2, "lesion_dice_medium": 0.5, "lesion_dice_large": 0.8}
    trials = [_trial(1, "dice", 0.9, 1.0, bins), _trial(2, "dice", 0.5, 3.0, bins),
              _trial(3, "glf", 0.7, None, bins), _trial(4, "glf", 0.1, None, {"precision": 0.5})]
    figures = SegmentationTask().figures(trials, tmp_path)
    assert figures == [("lesion_sizes.png", "Lesion Dice by lesion size, best trial of each loss "
                                            "(at its largest budget)")]
    assert (tmp_path / "lesion_sizes.png").stat().st_size > 1000
    assert SegmentationTask().figures(trials[3:], tmp_path / "none") == []


def test_glf_trajectories_of_the_best_trial_are_drawn_over_steps_and_in_the_tversky_plane(tmp_path):
    series = {name: [1.0, 0.9 - 0.1 * k, 0.8] for k, name in enumerate(GLF_LABELS)}
    trials = [_trial(1, "glf", 0.4, None, series), _trial(2, "glf", 0.6, None, series),
              _trial(3, "dice", 0.9, None, {})]
    figures = SegmentationTask().figures(trials, tmp_path)
    assert [name for name, _ in figures] == ["trajectories.png", "tversky_plane.png"]
    assert "trial 2" in figures[0][1] and "trial 2" in figures[1][1]  # the best that has them
    assert all((tmp_path / name).stat().st_size > 1000 for name, _ in figures)


def test_glf_trajectories_have_readable_labels_and_a_value_axis():
    series = {f"glf_{name}": [1.0, 0.9, 0.8] for name in TRAJECTORY_SERIES}
    axes = trajectories_figure([_trial(1, "glf", 0.5, None, series)]).axes
    coefficients, metrics = axes[0], axes[1]
    legend = [text.get_text() for text in coefficients.get_legend().get_texts()]
    assert legend == [r"$\alpha_P$", r"$\alpha_N$", r"$\beta^2$"]
    assert coefficients.get_ylabel() == "coefficient value (log scale)"
    legend = [text.get_text() for text in metrics.get_legend().get_texts()]
    assert legend[:2] == ["precision (batch, soft)", "recall (batch, soft)"]
    assert "glf_" not in " ".join(legend) and len(legend) == 3  # and the R/P ratio


def test_both_freeze_readings_and_the_exploratory_rule_each_get_their_figures(tmp_path):
    series = {f"glf_{name}": [1.0, None, 0.8] for name in TRAJECTORY_SERIES}  # NaN stored as null
    trials = [_trial(1, "glf_det_freeze_below", 0.4, None, series),
              _trial(2, "glf_det_freeze_above", 0.6, None, series),
              _trial(3, "glf_det_freeze_above", 0.5, None, series),
              _trial(4, "glf_exploratory", 0.3, None, series), _trial(5, "dice", 0.9, None, {})]
    figures = dict(SegmentationTask().figures(trials, tmp_path))
    assert list(figures) == ["trajectories.png", "tversky_plane.png"]
    for caption in figures.values():  # the best trial of each adaptive loss, in name order
        assert ("glf_det_freeze_above (trial 2), glf_det_freeze_below (trial 1), "
                "glf_exploratory (trial 4)") in caption
    assert all((tmp_path / name).stat().st_size > 1000 for name in figures)


def _replicates(loss: str, values: list[float], start: int, **metrics: list[float]) -> list[Trial]:
    return [_trial(start + k, loss, value, None, {name: v[k] for name, v in metrics.items()},
                   replicate=k) for k, value in enumerate(values)]


def test_each_loss_is_tested_against_dice_on_the_replicates_both_trained():
    dice = _replicates("dice", [0.5, 0.6, 0.7, 0.4], 0, recall=[0.25, 0.5, 0.75, 0.125])
    glf = _replicates("glf", [0.55, 0.62, 0.71, 0.47], 10, recall=[0.5, 0.75, 1.0, 0.375])
    other = _replicates("tversky", [0.5, 0.6, 0.7], 20, recall=[0.25, 0.5, 0.75])
    failed = _trial(30, "tversky", 0.9, None, {}, replicate=3)
    failed = dataclasses.replace(failed, state=TrialState.FAIL)
    comparison = paired_comparison(dice + glf + other + [failed], metrics=("value", "recall"))
    assert comparison.baseline == "dice" and comparison.header == ("loss", "value", "recall",
                                                                   "pairs")
    rows = {loss: (pairs, cells) for loss, pairs, cells in comparison.rows}
    assert rows["tversky"] == (3, ((0.0, 1.0), (0.0, 1.0)))  # identical: no difference
    pairs, ((value_difference, value_p), (recall_difference, recall_p)) = rows["glf"]
    assert pairs == 4
    assert value_difference == pytest.approx(0.0375)
    assert value_p == pytest.approx(stats.ttest_rel([0.55, 0.62, 0.71, 0.47],
                                                    [0.5, 0.6, 0.7, 0.4]).pvalue)
    assert recall_difference == 0.25 and recall_p == 0.0  # a constant difference
    text = comparison.text()
    assert "paired t-tests against dice" in text and "+0.038 (p 0.072)  " in text
    assert "+0.250 (p 0)*" in text
    # without replicates (a search, not a comparison) there is nothing to pair
    assert paired_comparison([_trial(1, "dice", 0.5, None, {})]) is None
    assert paired_comparison(glf) is None  # no baseline


def test_the_paired_tests_are_drawn_and_written_for_the_report(tmp_path):
    dice = _replicates("dice", [0.5, 0.6, 0.7], 0)
    glf = _replicates("glf", [0.55, 0.62, 0.75], 10)
    figures = SegmentationTask().figures(dice + glf, tmp_path)
    assert figures[0][0] == "paired_tests.png" and "paired t-test" in figures[0][1]
    assert (tmp_path / "paired_tests.png").stat().st_size > 1000
    text = (tmp_path / "paired_tests.txt").read_text()
    assert text.startswith("paired t-tests against dice") and "\nglf " in text


def test_plot_titles_carry_the_whole_configuration_wrapped():
    """The trajectories plot names its trial's configuration: every key, floats short, wrapped
    into lines; only a configuration longer than the lines allowed is cut, and says so."""
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
