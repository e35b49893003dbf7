"""medtune.metrics: hand-computed values, MONAI and scipy parity, empty masks, spacing, errors."""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage, stats
from scipy.spatial.distance import cdist

import medtune
from medtune.errors import MedtuneError
from medtune.metrics import (
    METRICS,
    DetectionCase,
    MetricError,
    accuracy,
    aufroc,
    bootstrap_ci,
    boundary_distances,
    boundary_f1,
    box_iou,
    cohens_d,
    dice,
    false_positives_per_patient,
    froc_curve,
    hausdorff95,
    iou,
    lesion_sensitivity,
    mean_absolute_error,
    patient_sensitivity,
    patient_specificity,
    pearson,
    per_class_accuracy,
    per_label,
    precision,
    recall,
    root_mean_squared_error,
    spearman,
    surface_dice,
    t_test,
)

# TP = 2, FP = 1, FN = 1 on six pixels, four of them labelled alike.
PREDICTION = np.array([[1, 1, 0], [0, 1, 0]])
TARGET = np.array([[1, 0, 0], [0, 1, 1]])


def squares(shift: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A 10x10 square and the same square moved ``shift`` rows down, on a 20x20 grid."""
    first = np.zeros((20, 20), bool)
    first[5:15, 5:15] = True
    second = np.zeros((20, 20), bool)
    second[5 + shift:15 + shift, 5:15] = True
    return first, second


def random_blobs(seed: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping smooth random masks away from the image border."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(2):
        field = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
        mask = field > np.quantile(field, 0.7)
        border = tuple(slice(2, n - 2) for n in shape)
        inner = np.zeros(shape, bool)
        inner[border] = True
        masks.append(mask & inner)
    return masks[0], masks[1]


def edges(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def directed(first: np.ndarray, second: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Brute-force distances from each boundary voxel of ``first`` to the boundary of ``second``."""
    scale = np.asarray(spacing)
    return cdist(np.argwhere(edges(first)) * scale, np.argwhere(edges(second)) * scale).min(axis=1)


# --- overlap -------------------------------------------------------------------------------


def test_overlap_metrics_match_hand_computed_values():
    assert dice(PREDICTION, TARGET) == pytest.approx(4 / 6)
    assert iou(PREDICTION, TARGET) == pytest.approx(2 / 4)
    assert precision(PREDICTION, TARGET) == pytest.approx(2 / 3)
    assert recall(PREDICTION, TARGET) == pytest.approx(2 / 3)
    assert accuracy(PREDICTION, TARGET) == pytest.approx(4 / 6)


def test_overlap_accepts_torch_tensors_and_booleans():
    assert dice(torch.tensor(PREDICTION), torch.tensor(TARGET, dtype=torch.bool)) == \
        pytest.approx(4 / 6)
    assert iou(torch.tensor(PREDICTION, dtype=torch.bfloat16, requires_grad=True),
               torch.tensor(TARGET)) == pytest.approx(0.5)


def test_empty_masks_follow_the_documented_convention():
    empty = np.zeros((4, 4), int)
    full = np.ones((4, 4), int)
    for metric in (dice, iou, precision, recall):
        assert metric(empty, empty) == 1.0
    assert dice(empty, full) == 0.0 and dice(full, empty) == 0.0
    assert precision(empty, full) == 0.0
    assert recall(full, empty) == 0.0
    assert iou(full, empty) == 0.0


def test_label_maps_score_one_label_and_each_label():
    target = np.array([0, 0, 1, 1, 2, 2])
    prediction = np.array([0, 1, 1, 1, 2, 0])
    assert per_class_accuracy(prediction, target) == pytest.approx({0: 0.5, 1: 1.0, 2: 0.5})
    assert dice(prediction, target, label=1) == pytest.approx(2 * 2 / (3 + 2))
    assert per_label(iou, prediction, target, labels=(1, 2)) == pytest.approx({1: 2 / 3, 2: 1 / 2})
    assert per_class_accuracy(prediction, target, labels=[3]) == {3: 1.0}
    assert accuracy(prediction, target) == pytest.approx(4 / 6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_and_iou_match_monai(seed):
    from monai.metrics import DiceMetric, MeanIoU

    first, second = random_blobs(seed, (24, 20, 16))
    as_batch = [torch.from_numpy(mask.astype(np.float32))[None, None] for mask in (first, second)]
    monai_dice = DiceMetric(include_background=True)(*as_batch)
    monai_iou = MeanIoU(include_background=True)(*as_batch)
    assert dice(first, second) == pytest.approx(float(monai_dice), abs=1e-6)
    assert iou(first, second) == pytest.approx(float(monai_iou), abs=1e-6)


# --- surface -------------------------------------------------------------------------------


def test_surface_metrics_of_shifted_squares_match_hand_computed_values():
    first, second = squares()
    # 36 boundary pixels each; 18 of them (top row, inner bottom row) are 1 mm from the other.
    assert surface_dice(first, second, tolerance=0.5) == pytest.approx(0.5)
    assert surface_dice(first, second, tolerance=1.0) == pytest.approx(1.0)
    assert hausdorff95(first, second) == pytest.approx(1.0)
    assert boundary_f1(first, second, tolerance=0.5) == pytest.approx(0.5)
    assert boundary_f1(first, second, tolerance=1.0) == pytest.approx(1.0)
    # default tolerance: 0.75 % of the 28.3 mm diagonal = 0.21 mm
    assert boundary_f1(first, second) == pytest.approx(0.5)


def test_anisotropic_spacing_changes_hd95_and_surface_dice():
    first, second = squares()
    # rows 2 mm apart: the 16 row-shifted pixels (10 top, 6 inner bottom) are now 2 mm away, the
    # two bottom pixels next to the corners stay 1 mm from the side column.
    assert hausdorff95(first, second, spacing=(2.0, 1.0)) == pytest.approx(2.0)
    assert hausdorff95(first, second, spacing=(1.0, 2.0)) == pytest.approx(1.0)
    assert surface_dice(first, second, tolerance=1.5, spacing=(2.0, 1.0)) == \
        pytest.approx(40 / 72, abs=1e-6)
    assert surface_dice(first, second, tolerance=1.5, spacing=(1.0, 2.0)) == pytest.approx(1.0)

    cube = np.zeros((12, 12, 12), bool)
    cube[3:8, 3:8, 3:8] = True
    moved = np.roll(cube, 2, axis=0)
    assert hausdorff95(cube, moved, spacing=(3.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert hausdorff95(cube, moved, spacing=(1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert surface_dice(cube, moved, tolerance=2.0) > \
        surface_dice(cube, moved, tolerance=2.0, spacing=(3.0, 1.0, 1.0))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.7, 1.2)])
def test_surface_metrics_match_brute_force_distances(spacing):
    first, second = random_blobs(3, (22, 18, 14))
    forward, backward = directed(first, second, spacing), directed(second, first, spacing)
    got_forward, got_backward = boundary_distances(first, second, spacing=spacing)
    np.testing.assert_allclose(np.sort(got_forward), np.sort(forward), atol=1e-5)
    np.testing.assert_allclose(np.sort(got_backward), np.sort(backward), atol=1e-5)

    expected_hd95 = max(np.percentile(forward, 95), np.percentile(backward, 95))
    assert hausdorff95(first, second, spacing=spacing) == pytest.approx(expected_hd95, rel=1e-5)

    tolerance = 1.5
    expected_nsd = (np.sum(forward <= tolerance) + np.sum(backward <= tolerance)) / (
        forward.size + backward.size)
    assert surface_dice(first, second, tolerance=tolerance, spacing=spacing) == \
        pytest.approx(expected_nsd, abs=1e-6)

    boundary_precision, boundary_recall = np.mean(forward <= 1.0), np.mean(backward <= 1.0)
    expected_bf = 2 * boundary_precision * boundary_recall / (boundary_precision + boundary_recall)
    assert boundary_f1(first, second, tolerance=1.0, spacing=spacing) == \
        pytest.approx(expected_bf)


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")
def test_hd95_matches_monai_on_label_maps():
    from monai.metrics import compute_hausdorff_distance

    first, second = random_blobs(4, (20, 20, 12))
    prediction = first.astype(int) * 2
    target = second.astype(int) * 2
    reference = compute_hausdorff_distance(
        torch.from_numpy(first.astype(np.float32))[None, None],
        torch.from_numpy(second.astype(np.float32))[None, None],
        include_background=True, percentile=95, spacing=[1.0, 2.0, 3.0])
    assert hausdorff95(prediction, target, label=2, spacing=(1.0, 2.0, 3.0)) == \
        pytest.approx(float(reference))


def test_surface_metrics_on_empty_masks():
    empty = np.zeros((8, 8), bool)
    first, _ = squares()
    first = first[:8, :8]
    assert surface_dice(empty, empty) == 1.0
    assert boundary_f1(empty, empty) == 1.0
    assert hausdorff95(empty, empty) == 0.0
    assert surface_dice(first, empty) == 0.0
    assert boundary_f1(empty, first) == 0.0
    assert hausdorff95(first, empty) == math.inf
    with pytest.raises(MetricError, match="non-empty"):
        boundary_distances(first, empty)


def test_surface_metrics_emit_no_warnings():
    first, second = squares()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        surface_dice(first, second)
        hausdorff95(first, second)
        boundary_f1(first, second)


# --- detection -----------------------------------------------------------------------------


def froc_cases() -> list[DetectionCase]:
    """Three patients: two lesions, one lesion, none; FROC points worked out by hand below."""
    return [
        # 0.9 hits lesion 1, 0.6 hits nothing, 0.4 hits lesion 2
        DetectionCase([0.9, 0.6, 0.4], [[True, False], [False, False], [False, True]]),
        # 0.8 hits nothing, 0.7 hits the lesion
        DetectionCase([0.8, 0.7], [[False], [True]]),
        # no lesion: 0.7 is a false positive (tied with patient 2's true positive)
        DetectionCase([0.7], np.zeros((1, 0), bool)),
    ]


def test_froc_curve_matches_the_hand_computed_points():
    curve = froc_curve(froc_cases())
    # patient-averaged sensitivity: each lesion of patient 1 weighs 1/4, patient 2's 1/2
    np.testing.assert_allclose(curve.thresholds, [np.inf, 0.9, 0.8, 0.7, 0.6, 0.4])
    np.testing.assert_allclose(curve.false_positives_per_patient, [0, 0, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(curve.sensitivity, [0, 0.25, 0.25, 0.75, 0.75, 1.0])
    lesion_curve = froc_curve(froc_cases(), average="lesion")
    np.testing.assert_allclose(lesion_curve.sensitivity, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1.0])


def test_aufroc_integrates_the_polyline_by_hand():
    cases = froc_cases()
    # 0.02..1/3 at 0.25, then the line from (1/3, 0.25) to (2/3, 0.75) up to x = 0.5 (y = 0.5)
    expected = 0.25 * (1 / 3 - 0.02) + (0.25 + 0.5) / 2 * (0.5 - 1 / 3)
    assert aufroc(cases) == pytest.approx(expected)
    assert aufroc(froc_curve(cases), normalize=True) == pytest.approx(expected / 0.48)
    # over 0..2: 1/12 + 1/6 + 1/4, then held at sensitivity 1 from 1 to 2
    assert aufroc(cases, false_positive_range=(0.0, 2.0)) == pytest.approx(1.5)
    assert aufroc([DetectionCase([], np.zeros((0, 1), bool))]) == 0.0
    assert aufroc([DetectionCase([0.5], [[True]])], normalize=True) == pytest.approx(1.0)


def test_patient_and_lesion_wise_metrics_at_thresholds():
    cases = froc_cases()
    # at 0.65: patient 1 misses lesion 2 (FN), patient 2 is a TP, patient 3 keeps 0.7 (FP)
    assert patient_sensitivity(cases, 0.65) == pytest.approx(0.5)
    assert patient_specificity(cases, 0.65) == 0.0
    assert patient_specificity(cases, 0.75) == 1.0
    assert lesion_sensitivity(cases, 0.65) == pytest.approx(0.75)
    assert lesion_sensitivity(cases, 0.65, average="lesion") == pytest.approx(2 / 3)
    assert false_positives_per_patient(cases, 0.75) == pytest.approx(1 / 3)
    # threshold None keeps every detection, like a reader's markers
    assert patient_sensitivity(cases) == 1.0
    assert patient_specificity(cases) == 0.0
    assert false_positives_per_patient(cases) == pytest.approx(1.0)


def test_a_lesion_no_detection_hits_stays_missed_at_every_threshold():
    without_detections = DetectionCase.from_points([], [], np.ones((3, 3)))
    cases = [DetectionCase([0.9], [[True, False]]), without_detections]
    assert cases[1].hits.shape == (0, 1)
    assert patient_sensitivity(cases) == 0.0
    assert lesion_sensitivity(cases) == pytest.approx((1 / 2 + 0) / 2)
    assert lesion_sensitivity(cases, average="lesion") == pytest.approx(1 / 3)
    assert froc_curve(cases).sensitivity[-1] == pytest.approx(0.25)


def test_detection_cases_from_points_and_boxes():
    lesions = np.zeros((10, 10), int)
    lesions[1:3, 1:3] = 4
    lesions[6:9, 6:9] = 7
    case = DetectionCase.from_points([[1, 2], [7.2, 6.9], [5, 0]], [0.9, 0.8, 0.1], lesions)
    np.testing.assert_array_equal(case.hits, [[True, False], [False, True], [False, False]])
    components = DetectionCase.from_points([[2, 2]], [0.5], lesions > 0, components=True)
    assert components.num_lesions == 2 and components.hits.tolist() == [[True, False]]

    assert box_iou([[0, 0, 2, 2]], [[0, 0, 2, 1], [1, 1, 3, 3]]) == pytest.approx(
        np.array([[0.5, 1 / 7]]))
    boxes = DetectionCase.from_boxes([[0, 0, 2, 2], [0, 0, 2, 1.5]], [0.3, 0.2], [[0, 0, 2, 1]])
    # IoU must be strictly above 0.5 (Pourchot2022): 0.5 misses, 1 / 1.5 hits
    assert boxes.hits.tolist() == [[False], [True]]


# --- statistics ----------------------------------------------------------------------------


def test_regression_errors_match_hand_computed_values():
    assert mean_absolute_error([1, 2, 3], [1, 3, 5]) == pytest.approx(1.0)
    assert root_mean_squared_error(torch.tensor([1.0, 2, 3]), [1, 3, 5]) == \
        pytest.approx(math.sqrt(5 / 3))


def test_correlations_match_scipy_with_fisher_intervals():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(scale=0.8, size=40)
    result = pearson(x, y)
    reference = stats.pearsonr(x, y)
    assert result.coefficient == pytest.approx(reference.statistic)
    assert result.p_value == pytest.approx(reference.pvalue)
    z, half = math.atanh(reference.statistic), 1.959963984540054 / math.sqrt(37)
    assert (result.low, result.high) == pytest.approx((math.tanh(z - half), math.tanh(z + half)))
    assert float(result) == result.coefficient

    ranked = spearman(x, y, confidence=0.9)
    reference = stats.spearmanr(x, y)
    assert ranked.coefficient == pytest.approx(reference.statistic)
    assert ranked.p_value == pytest.approx(reference.pvalue)
    z, half = math.atanh(reference.statistic), 1.6448536269514722 * math.sqrt(1.06 / 37)
    assert (ranked.low, ranked.high) == pytest.approx((math.tanh(z - half), math.tanh(z + half)))
    assert spearman([1, 2, 3, 4, 5], [1, 4, 9, 16, 25]).coefficient == pytest.approx(1.0)


def test_cohens_d_and_t_tests():
    assert cohens_d([1, 2, 3], [2, 3, 4]) == pytest.approx(-1.0)
    # sample variances 1 and 2 (mean 4, squares 4 + 0 + 1 + 1 over 3): pooled (2 + 6) / 5
    assert cohens_d([1, 2, 3], [2, 4, 5, 5]) == pytest.approx((2 - 4) / math.sqrt(1.6))

    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 15), rng.normal(0.5, 2, 20)
    welch = t_test(a, b)
    reference = stats.ttest_ind(a, b, equal_var=False)
    assert (welch.statistic, welch.p_value) == \
        pytest.approx((reference.statistic, reference.pvalue))
    student = t_test(a, b, equal_variance=True, alternative="less")
    reference = stats.ttest_ind(a, b, equal_var=True, alternative="less")
    assert (student.statistic, student.p_value) == \
        pytest.approx((reference.statistic, reference.pvalue))
    assert student.degrees_of_freedom == 33
    paired = t_test(a, b[:15], paired=True, alternative="greater")
    reference = stats.ttest_rel(a, b[:15], alternative="greater")
    assert (paired.statistic, paired.p_value) == \
        pytest.approx((reference.statistic, reference.pvalue))


def test_bootstrap_interval_is_seeded_and_close_to_the_normal_interval():
    rng = np.random.default_rng(2)
    sample = rng.normal(10.0, 2.0, 400)
    interval = bootstrap_ci(np.mean, sample, n_resamples=1000, seed=7)
    assert interval == bootstrap_ci(np.mean, sample, n_resamples=1000, seed=7)
    assert interval != bootstrap_ci(np.mean, sample, n_resamples=1000, seed=8)
    assert interval.estimate == pytest.approx(sample.mean())
    half = 1.96 * sample.std(ddof=1) / math.sqrt(sample.size)
    assert interval.low == pytest.approx(sample.mean() - half, abs=0.2 * half)
    assert interval.high == pytest.approx(sample.mean() + half, abs=0.2 * half)

    x = rng.normal(size=60)
    y = x + rng.normal(size=60)
    paired = bootstrap_ci(lambda p, t: pearson(p, t).coefficient, x, y, n_resamples=300)
    assert paired.low < paired.estimate < paired.high
    unpaired = bootstrap_ci(lambda p, q: p.mean() - q.mean(), x, y[:30], n_resamples=300,
                            paired=False)
    assert unpaired.low < unpaired.estimate < unpaired.high


# --- plugins -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(METRICS) - {"aufroc"}))
def test_every_metric_plugin_is_created_through_the_registry(name):
    metric = medtune.create("metric", name)
    assert metric.name == name
    assert metric.direction == ("minimize" if name in {"hausdorff95", "mae", "rmse"}
                                else "maximize")
    first, second = squares()
    value = metric(first.astype(float), second.astype(float))
    assert isinstance(value, float) and math.isfinite(value)


def test_metric_plugins_pass_their_options():
    first, second = squares()
    surface = medtune.create("metric", "surface_dice", tolerance=1.5, spacing=(2.0, 1.0))
    assert surface(first, second) == pytest.approx(40 / 72, abs=1e-6)
    assert medtune.create("metric", "dice", label=2)(PREDICTION * 2, TARGET * 2) == \
        pytest.approx(4 / 6)
    assert medtune.create("metric", "boundary_f1", tolerance=np.float32(0.5))(first, second) == \
        pytest.approx(0.5)
    area = medtune.create("metric", "aufroc", normalize=True)
    assert area(froc_cases(), None) == pytest.approx(aufroc(froc_cases(), normalize=True))
    assert "direction='maximize'" in repr(area)
    rebuilt = pickle.loads(pickle.dumps(surface))  # process-pool executors ship metrics
    assert (rebuilt.name, rebuilt(first, second)) == ("surface_dice", surface(first, second))
    assert medtune.create("metric", "hausdorff95", spacing=np.float32(2.0))(first, second) == 2.0


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda: dice(np.zeros((3, 3)), np.zeros((3, 4))), "shape"),
    (lambda: dice(np.zeros((0, 3)), np.zeros((0, 3))), "empty"),
    (lambda: dice(np.array([0.2, 0.9]), np.array([0, 1])), "not binary"),
    (lambda: iou(np.array([0, 2]), np.array([0, 1])), "label="),
    (lambda: surface_dice(*squares(), tolerance=-1.0), "tolerance"),
    (lambda: boundary_f1(*squares(), tolerance=float("nan")), "tolerance"),
    (lambda: hausdorff95(*squares(), spacing=(1.0, 1.0, 1.0)), "spacing"),
    (lambda: hausdorff95(*squares(), spacing=(1.0, 0.0)), "positive"),
    (lambda: hausdorff95(np.ones(5), np.ones(5)), "2D or 3D"),
    (lambda: per_label(dice, PREDICTION, TARGET, labels=[]), "labels"),
    (lambda: pearson([1, 1, 1], [1, 2, 3]), "constant"),
    (lambda: pearson([1, 2, 3], [1, 2]), "paired"),
    (lambda: pearson([1.0, np.nan, 3], [1, 2, 3]), "NaN"),
    (lambda: mean_absolute_error([], []), "at least"),
    (lambda: spearman([1, 2, 3, 4], [2, 1, 4, 3], confidence=1.5), "confidence"),
    (lambda: cohens_d([1, 1], [2, 2]), "pooled"),
    (lambda: t_test([1, 2, 3], [1, 2], paired=True), "paired"),
    (lambda: t_test([1, 2, 3], [1, 2], alternative="bigger"), "alternative"),
    (lambda: bootstrap_ci(np.mean, [1, 2, 3], [1, 2]), "paired"),
    (lambda: bootstrap_ci(np.mean, [], n_resamples=100), "empty"),
    (lambda: DetectionCase([0.5, 0.4], [[True]]), "hits"),
    (lambda: DetectionCase([np.nan], [[True]]), "finite"),
    (lambda: DetectionCase.from_points([[12, 0]], [0.5], np.zeros((10, 10))), "outside"),
    (lambda: DetectionCase.from_points([[1, 2, 3]], [0.5], np.zeros((10, 10))), "shape"),
    (lambda: bootstrap_ci(np.mean, 3.0), "single number"),
    (lambda: box_iou([[0, 0, 1]], [[0, 0, 1]]), "2 \\* ndim"),
    (lambda: box_iou([[2, 2, 1, 1]], [[0, 0, 1, 1]]), "maximum corner"),
    (lambda: aufroc(froc_cases(), false_positive_range=(0.5, 0.02)), "false_positive_range"),
    (lambda: aufroc(froc_cases(), false_positive_range=(0.1, 0.2, 0.3)), "false_positive_range"),
    (lambda: lesion_sensitivity([DetectionCase([0.5], np.zeros((1, 0)))]), "lesion"),
    (lambda: patient_sensitivity([DetectionCase([0.5], np.zeros((1, 0)))]), "with a lesion"),
    (lambda: patient_specificity([DetectionCase([0.5], [[True]])]), "without lesions"),
    (lambda: froc_curve([]), "no cases"),
    (lambda: froc_curve(froc_cases(), average="image"), "average"),
    (lambda: medtune.create("metric", "dice", tolerance=1.0), "accepted options: label"),
    (lambda: medtune.create("metric", "surface_dice", tolerance=-2), "tolerance"),
    (lambda: medtune.create("metric", "hausdorff95", spacing=(1.0, -1.0)), "positive"),
    (lambda: medtune.create("metric", "aufroc")(froc_cases(), froc_cases()), "target=None"),
])
def test_errors_say_what_was_wrong(call, message):
    with pytest.raises(MetricError, match=message) as caught:
        call()
    assert isinstance(caught.value, (MedtuneError, ValueError))
