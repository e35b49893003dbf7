"""The scans fingerprint and plan: intensity statistics and smallest structures, the target
spacing and anisotropy rule, normalisation schemes, the DynUNet topology, the memory model
against a real DynUNet, patch and batch under a budget, the 2d configuration, overrides and
plan.json."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from rich.console import Console

from medtune.errors import MedtuneError
from medtune.plugins.scans.fingerprint import (
    SAMPLES_PER_CASE,
    ChannelIntensity,
    Fingerprint,
    fingerprint,
    summarise,
)
from medtune.plugins.scans.layout import ScanDataError, Volume, load_dataset
from medtune.plugins.scans.network import build_network
from medtune.plugins.scans.plan import (
    BYTES_PER_PARAMETER,
    BYTES_PER_VALUE,
    Plan,
    PlanError,
    activation_values,
    divisors,
    dynunet_parameters,
    dynunet_topology,
    estimate_memory_gb,
    make_plan,
    plan_table,
    stage_filters,
    target_spacing,
)
from medtune.plugins.scans.sample import write_sample

LABELS = {"background": 0, "organ": 1, "lesion": 2}


def volume(array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Volume:
    return Volume(np.asarray(array, dtype=np.float32), np.diag([*spacing, 1.0]), None)


def synthetic_fingerprint(spacings, shapes, channels=("CT", "T2")) -> Fingerprint:
    """A fingerprint with given geometry and plausible statistics (no volumes needed)."""
    intensity = ChannelIntensity(mean=40.0, std=10.0, median=41.0, percentile_00_5=-20.0, percentile_99_5=90.0)
    return Fingerprint(
        dataset="Synthetic", channels=tuple(channels), labels=dict(LABELS),
        cases=tuple(f"case_{i:03d}" for i in range(len(shapes))),
        spacings=tuple(tuple(map(float, s)) for s in spacings),
        shapes=tuple(tuple(map(int, s)) for s in shapes),
        intensities=tuple(intensity for _ in channels),
        label_voxels={"background": 1000, "organ": 100, "lesion": 10},
        smallest_structures={"organ": None, "lesion": None},
    )


CT_LIKE = synthetic_fingerprint([(0.8, 0.8, 2.5)] * 6 + [(0.7, 0.7, 5.0)] * 4,
                                [(256, 256, 60)] * 10)


# --- fingerprint ------------------------------------------------------------------------------


def test_fingerprint_statistics_of_the_foreground():
    rng = np.random.default_rng(0)
    cases = []
    for index in range(3):
        label = np.zeros((20, 20, 10), np.int16)
        label[5:15, 5:15, 2:8] = 1            # 600 organ voxels
        label[2:4, 2:4, 2:4] = 2              # an 8-voxel lesion
        label[17:19, 17:18, 5:6] = 2          # a 2-voxel lesion: the smallest structure
        image = np.stack([np.where(label > 0, 100.0 + index, -1000.0),
                          rng.normal(size=label.shape) + 5.0 * (label > 0)])
        cases.append((f"case_{index}", volume(image, (0.5, 0.5, 2.0)), label))
    fp = summarise("Toy", ("CT", "T2"), LABELS, cases)
    ct = fp.intensities[0]
    assert ct.mean == pytest.approx(101.0) and ct.median == pytest.approx(101.0)
    assert ct.percentile_00_5 == pytest.approx(100.0) and ct.percentile_99_5 == pytest.approx(102.0)
    assert fp.intensities[1].mean == pytest.approx(5.0, abs=0.1)  # background never sampled
    assert fp.label_voxels == {"background": 3 * (4000 - 610), "organ": 3 * 600, "lesion": 3 * 10}
    assert sum(fp.class_frequencies.values()) == pytest.approx(1.0)
    lesion = fp.smallest_structures["lesion"]
    assert (lesion.voxels, lesion.volume_mm3, lesion.case) == (2, pytest.approx(2 * 0.5), "case_0")
    assert fp.smallest_structures["organ"].voxels == 600
    assert fp.spacings[0] == pytest.approx((0.5, 0.5, 2.0)) and fp.shapes[0] == (20, 20, 10)
    assert Fingerprint.from_json(json.loads(json.dumps(fp.to_json()))) == fp


def test_fingerprint_samples_a_bounded_deterministic_subset():
    label = np.ones((40, 40, 20), np.int16)  # 32 000 foreground voxels, more than the sample
    image = np.arange(label.size, dtype=np.float32).reshape(1, *label.shape)
    fp = summarise("Big", ("MR",), {"background": 0, "organ": 1}, [("a", volume(image), label)])
    again = summarise("Big", ("MR",), {"background": 0, "organ": 1}, [("a", volume(image), label)])
    assert fp == again
    assert SAMPLES_PER_CASE < label.size
    assert fp.intensities[0].mean == pytest.approx(label.size / 2, rel=0.02)  # a uniform sample
    assert fp.smallest_structures == {"organ": fp.smallest_structures["organ"]}
    assert fp.smallest_structures["organ"].voxels == label.size


def test_absent_label_has_no_structure():
    label = np.zeros((10, 10, 10), np.int16)
    label[2:5, 2:5, 2:5] = 1
    fp = summarise("Toy", ("CT",), LABELS, [("a", volume(label[None] * 1.0), label)])
    assert fp.smallest_structures["lesion"] is None and fp.label_voxels["lesion"] == 0


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("scans") / "data")


def test_fingerprint_of_the_sample_dataset(sample):
    fp = fingerprint(sample)
    assert fp.cases == tuple(case.name for case in sample.training)
    assert fp.channels == ("CT", "T2") and fp.labels == LABELS
    assert fp.median_spacing == pytest.approx((0.8, 0.8, 2.5), rel=1e-3)
    assert all(fp.smallest_structures[name] is not None for name in ("organ", "lesion"))
    assert fp.label_voxels["lesion"] > 0


def test_fingerprint_refuses_a_dataset_without_foreground(tmp_path):
    nib = pytest.importorskip("nibabel")
    dataset = write_sample(tmp_path / "data", cases=3, size=24)
    for case in dataset.training:
        image = nib.load(case.label)
        nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), case.label)
    with pytest.raises(ScanDataError, match="foreground"):
        fingerprint(load_dataset(tmp_path / "data"))


# --- target spacing and normalisation ---------------------------------------------------------


def test_target_spacing_takes_the_median_of_isotropic_data():
    fp = synthetic_fingerprint([(1.0, 1.0, 1.0), (1.2, 1.2, 1.5), (0.9, 0.9, 2.0)], [(100, 100, 100)] * 3)
    assert target_spacing(fp) == pytest.approx((1.0, 1.0, 1.5))


def test_anisotropic_axis_takes_its_tenth_percentile():
    # median z spacing 2.5 > 3 x 0.8 and few slices: z takes the 10th percentile of its spacings
    spacings = [(0.8, 0.8, z) for z in (2.5, 2.5, 2.5, 5.0, 5.0, 2.5, 6.0, 2.5, 1.0, 5.0)]
    fp = synthetic_fingerprint(spacings, [(256, 256, 40)] * 10)
    expected_z = float(np.percentile([s[2] for s in spacings], 10))
    assert target_spacing(fp) == pytest.approx((0.8, 0.8, expected_z))
    # ... but not finer than the other axes
    fp = synthetic_fingerprint([(0.8, 0.8, 3.0)] * 9 + [(0.8, 0.8, 0.5)], [(256, 256, 40)] * 10)
    assert target_spacing(fp)[2] == pytest.approx(max(0.8, float(np.percentile([3.0] * 9 + [0.5], 10))))


def test_anisotropy_rule_needs_few_voxels_along_the_coarse_axis():
    # as coarse, but as many slices as in-plane voxels: the median stays
    spacings = [(0.8, 0.8, z) for z in (2.5, 2.5, 2.5, 5.0, 5.0, 2.5, 6.0, 2.5, 1.0, 5.0)]
    fp = synthetic_fingerprint(spacings, [(256, 256, 256)] * 10)
    assert target_spacing(fp) == pytest.approx((0.8, 0.8, 2.5))


def test_normalisation_schemes():
    plan = make_plan(CT_LIKE, memory_budget_gb=4.0)
    ct, t2 = plan.normalisation
    assert ct == {"scheme": "ct", "clip": [-20.0, 90.0], "mean": 40.0, "std": 10.0}
    assert t2 == {"scheme": "zscore", "clip": None, "mean": None, "std": None}


# --- topology ---------------------------------------------------------------------------------


def test_topology_of_isotropic_patch():
    kernels, strides = dynunet_topology((1.0, 1.0, 1.0), (64, 64, 64))
    assert strides == ((1, 1, 1),) + ((2, 2, 2),) * 4   # 64 -> 32 -> 16 -> 8 -> 4
    assert kernels == ((3, 3, 3),) * 5
    assert divisors(strides) == (16, 16, 16)


def test_topology_of_anisotropic_patch_waits_for_the_coarse_axis():
    kernels, strides = dynunet_topology((0.8, 0.8, 2.5), (160, 160, 48))
    assert strides[1] == (2, 2, 1) and kernels[0] == (3, 3, 1)  # z 3x coarser: neither pooled nor convolved
    assert strides[2] == (2, 2, 2) and kernels[2] == (3, 3, 3)  # at 1.6 mm in-plane z (2.5 mm) is within 2x
    assert kernels[-1] == (3, 3, 3) and len(kernels) == len(strides)
    shape = np.array([160, 160, 48])
    for stride in strides:
        shape = np.ceil(shape / np.array(stride))
    assert shape.min() >= 4 and (shape < 8).all()  # pooled down to the bottleneck, never below 4


def test_filters_double_up_to_the_cap():
    assert stage_filters(7, 32, 3) == (32, 64, 128, 256, 320, 320, 320)
    assert stage_filters(7, 32, 2) == (32, 64, 128, 256, 512, 512, 512)


# --- memory model -----------------------------------------------------------------------------


def saved_tensor_bytes(network: torch.nn.Module, patch, batch: int, channels: int, classes: int) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of one training step
    (forward and Dice + cross-entropy loss), parameters excluded."""
    parameters = {p.untyped_storage().data_ptr() for p in network.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, channels, *patch, generator=generator)
    target = torch.randint(0, classes, (batch, 1, *patch), generator=generator)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        DiceCELoss(to_onehot_y=True, softmax=True)(network(inputs), target)
    return sum(kept.values())


MEMORY_CASES = [
    # (spacing of the patch axes, patch, channels, classes, base filters)
    ((1.0, 1.0, 1.0), (32, 32, 32), 1, 2, 16),
    ((0.8, 0.8, 2.5), (48, 48, 16), 2, 3, 16),
    ((1.0, 1.0), (64, 64), 1, 3, 32),
]


@pytest.mark.parametrize("spacing, patch, channels, classes, base", MEMORY_CASES)
def test_memory_model_against_a_real_dynunet(spacing, patch, channels, classes, base):
    kernels, strides = dynunet_topology(spacing, patch)
    filters = stage_filters(len(strides), base, len(patch))
    plan = make_plan(synthetic_fingerprint([(1.0, 1.0, 1.0)], [(64, 64, 64)],
                                           channels=("MR",) * channels), memory_budget_gb=4.0)
    plan = replace(plan, configuration="3d" if len(patch) == 3 else "2d",
                   labels={f"class{k}": k for k in range(classes)},
                   patch_size=patch, kernels=kernels, strides=strides, filters=filters)
    torch.manual_seed(0)
    network = build_network(plan)
    parameters = sum(p.numel() for p in network.parameters())
    assert dynunet_parameters(channels, classes, kernels, strides, filters) == parameters
    batch = 2
    saved = saved_tensor_bytes(network, patch, batch, channels, classes)
    modelled = activation_values(patch, channels, classes, strides, filters) * batch * BYTES_PER_VALUE
    assert modelled == pytest.approx(saved, rel=0.05)  # the count itself: every kept map
    measured_gb = (saved + BYTES_PER_PARAMETER * parameters) / 2**30
    estimate = estimate_memory_gb(patch, batch, channels, classes, kernels, strides, filters)
    assert 0.5 * measured_gb <= estimate <= 2.0 * measured_gb


def test_memory_grows_with_batch_and_patch():
    kernels, strides = dynunet_topology((1.0, 1.0, 1.0), (64, 64, 64))
    filters = stage_filters(len(strides), 32, 3)
    one = estimate_memory_gb((64, 64, 64), 1, 1, 2, kernels, strides, filters)
    two = estimate_memory_gb((64, 64, 64), 2, 1, 2, kernels, strides, filters)
    parameters_gb = dynunet_parameters(1, 2, kernels, strides, filters) * BYTES_PER_PARAMETER / 2**30
    assert two - one == pytest.approx(one - parameters_gb)  # linear in the batch


# --- make_plan --------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0.5, 2.0, 6.0, 12.0])
def test_plan_fits_the_budget(budget):
    plan = make_plan(CT_LIKE, memory_budget_gb=budget)
    assert plan.estimated_memory_gb <= budget and plan.memory_budget_gb == budget
    assert plan.batch_size >= 2 and len(plan.patch_size) == 3
    assert plan.estimated_memory_gb == pytest.approx(estimate_memory_gb(
        plan.patch_size, plan.batch_size, 2, 3, plan.kernels, plan.strides, plan.filters))
    assert all(p % d == 0 for p, d in zip(plan.patch_size, divisors(plan.strides)))
    assert (plan.kernels, plan.strides) == dynunet_topology(plan.spacing, plan.patch_size)
    assert plan.filters[0] == (16 if budget < 8 else 32)


def test_smaller_budget_smaller_patch():
    patches = [math.prod(make_plan(CT_LIKE, memory_budget_gb=b).patch_size) for b in (0.3, 1.0, 3.0, 7.0)]
    assert patches == sorted(patches) and patches[0] < patches[-1]


def test_patch_follows_the_median_shape_in_mm():
    plan = make_plan(CT_LIKE, memory_budget_gb=100.0)
    # nothing to shrink: the patch is the median resampled shape padded to divisibility
    assert all(p >= m for p, m in zip(plan.patch_size, plan.median_shape))
    assert all(p - m < d for p, m, d in zip(plan.patch_size, plan.median_shape, divisors(plan.strides)))


def test_batch_grows_to_the_dataset_share_cap():
    many = synthetic_fingerprint([(1.0, 1.0, 1.0)] * 200, [(64, 64, 64)] * 200)
    plan = make_plan(many, memory_budget_gb=200.0)
    cap = round(0.05 * 200 * 64**3 / math.prod(plan.patch_size))
    assert plan.batch_size == cap > 2
    few = synthetic_fingerprint([(1.0, 1.0, 1.0)] * 2, [(64, 64, 64)] * 2)
    assert make_plan(few, memory_budget_gb=200.0).batch_size == 2  # at least 2
    grown = make_plan(many, memory_budget_gb=2.0)
    assert 2 < grown.batch_size < cap  # limited by memory
    assert estimate_memory_gb(grown.patch_size, grown.batch_size + 1, 2, 3, grown.kernels,
                              grown.strides, grown.filters) > 2.0


def test_too_small_budget_is_an_error():
    with pytest.raises(PlanError, match="budget"):
        make_plan(CT_LIKE, memory_budget_gb=0.001)
    with pytest.raises(PlanError, match="configuration"):
        make_plan(CT_LIKE, configuration="4d")
    with pytest.raises(PlanError, match="budget"):
        make_plan(CT_LIKE, memory_budget_gb=-1)


def test_2d_plan_slices_across_the_coarsest_axis():
    plan = make_plan(CT_LIKE, configuration="2d", memory_budget_gb=4.0)
    assert plan.slice_axis == 2 and plan.patch_axes == (0, 1)
    assert len(plan.patch_size) == 2 and len(plan.spacing) == 3
    assert all(len(k) == 2 for k in plan.kernels) and all(len(s) == 2 for s in plan.strides)
    assert plan.median_shape[2] == 60  # slices are not resampled
    with pytest.raises(PlanError, match="'patch_size' must be 2"):
        plan.with_overrides(patch_size=(64, 64, 16))
    with torch.no_grad():
        logits = build_network(plan)(torch.zeros(1, 2, *plan.patch_size))
    assert logits.shape == (1, 3, *plan.patch_size)
    assert estimate_memory_gb(plan.patch_size, plan.batch_size, 2, 3, plan.kernels, plan.strides,
                              plan.filters) <= 4.0
    sagittal = synthetic_fingerprint([(3.0, 0.7, 0.7)] * 4, [(40, 300, 300)] * 4)
    plan = make_plan(sagittal, configuration="2d", memory_budget_gb=4.0)
    assert plan.slice_axis == 0 and plan.patch_axes == (1, 2) and plan.median_shape[0] == 40
    assert make_plan(sagittal, memory_budget_gb=4.0).slice_axis is None


def test_small_volumes_still_get_three_stages():
    tiny = synthetic_fingerprint([(1.0, 1.0, 1.0)] * 3, [(10, 10, 10)] * 3)
    plan = make_plan(tiny, memory_budget_gb=4.0)
    assert len(plan.strides) >= 3 and plan.patch_size == (16, 16, 16)


# --- overrides, plan.json, key, table ---------------------------------------------------------


@pytest.fixture(scope="module")
def plan() -> Plan:
    return make_plan(CT_LIKE, memory_budget_gb=4.0)


def test_overrides_rederive_the_topology(plan):
    changed = plan.with_overrides(patch_size=(64, 64, 32), batch_size=3)
    assert changed.patch_size == (64, 64, 32) and changed.batch_size == 3
    assert (changed.kernels, changed.strides) == dynunet_topology(changed.spacing, (64, 64, 32))
    assert changed.filters == stage_filters(len(changed.strides), plan.filters[0], 3)
    assert changed.estimated_memory_gb == pytest.approx(estimate_memory_gb(
        (64, 64, 32), 3, 2, 3, changed.kernels, changed.strides, changed.filters))
    iso = plan.with_overrides(spacing=(1.5, 1.5, 1.5))
    assert iso.strides[1] == (2, 2, 2)  # isotropic now: every axis pooled from the start
    assert iso.median_shape == tuple(round(m * s / 1.5) for m, s in zip(plan.median_shape, plan.spacing))
    assert plan.with_overrides() == plan


@pytest.mark.parametrize("overrides, field", [
    ({"patch_size": (100, 96, 32)}, "patch_size"),        # 100 not divisible by its strides' product
    ({"patch_size": (64, 64)}, "patch_size"),             # wrong number of axes
    ({"patch_size": (6, 6, 6)}, "patch_size"),            # too small for 3 stages
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"spacing": (1.0, -1.0, 1.0)}, "spacing"),
    ({"spacing": (1.0, 1.0)}, "spacing"),
    ({"normalisation": ({"scheme": "minmax"}, {"scheme": "zscore"})}, "normalisation"),
    ({"normalisation": ({"scheme": "zscore"},)}, "normalisation"),
    ({"kernels": ((3, 3, 3),)}, "kernels"),
    ({"patch": (64, 64, 64)}, "patch"),
])
def test_overrides_are_checked(plan, overrides, field):
    with pytest.raises(PlanError, match=f"'{field}'") as error:
        plan.with_overrides(**overrides)
    assert isinstance(error.value, MedtuneError)


def test_indivisible_patch_suggests_sizes(plan):
    with pytest.raises(PlanError, match="use 96 or 112"):
        plan.with_overrides(patch_size=(100, 96, 32))


def test_plan_json_round_trip(plan):
    data = json.loads(json.dumps(plan.to_json()))
    assert data["format_version"] == 1
    assert Plan.from_json(data) == plan
    with pytest.raises(PlanError, match="batch_size"):
        Plan.from_json({k: v for k, v in data.items() if k != "batch_size"})
    with pytest.raises(PlanError, match="strides"):
        Plan.from_json({**data, "strides": [[1, 1, 1]] * len(data["strides"])})
    with pytest.raises(PlanError, match="format_version"):
        Plan.from_json({**data, "format_version": 99})


def test_key_follows_what_preprocessing_depends_on(plan):
    assert plan.key() == Plan.from_json(plan.to_json()).key()
    assert plan.key() == plan.with_overrides(batch_size=5, patch_size=(64, 64, 32)).key()
    assert plan.key() != plan.with_overrides(spacing=(1.0, 1.0, 2.0)).key()
    zscore = ({"scheme": "zscore"}, {"scheme": "zscore"})
    assert plan.key() != plan.with_overrides(normalisation=zscore).key()
    assert plan.key() != make_plan(CT_LIKE, configuration="2d", memory_budget_gb=4.0).key()


def test_plan_table_shows_the_choices(plan):
    console = Console(record=True, width=140)
    console.print(plan_table(plan, CT_LIKE))
    text = console.export_text()
    for expected in ("patch size", " x ".join(map(str, plan.patch_size)), "batch size",
                     "clip to [-20, 90]", "z-score per image", "target spacing (mm)", "GB"):
        assert expected in text
