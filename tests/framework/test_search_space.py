"""Search spaces: parameters, conditions, enumeration, sampling, neighbours, mutation, TOML form."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medtune.search import Categorical, Float, Int, Ordinal, SearchSpace, SearchSpaceError
from medtune.search.space import UniqueSampler

TOML_EXAMPLE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "width": {"type": "ordinal", "values": [8, 16, 32]},
    "loss": {"type": "categorical", "choices": ["dice", "glf"]},
    "beta2": {"type": "float", "low": 0.5, "high": 2, "condition": {"loss": ["glf"]}},
}


def conditional_space() -> SearchSpace:
    """72 configurations: width x (dice | tversky x alpha | glf x beta2 x adaptive(x rate))."""
    return SearchSpace([
        Ordinal("width", [8, 16, 32]),
        Categorical("loss", ["dice", "tversky", "glf"]),
        Ordinal("alpha", [0.3, 0.5, 0.7], condition={"loss": ["tversky"]}),
        Ordinal("beta2", [0.5, 1.0, 2.0, 4.0], condition={"loss": ["glf"]}),
        Categorical("adaptive", ["none", "deterministic", "exploratory"],
                    condition={"loss": ["glf"]}),
        Int("rate", 1, 3, condition={"adaptive": ["exploratory"]}),
    ])


def brute_force_count(space: SearchSpace) -> int:
    """Configurations found by trying every value, or absence, for every parameter."""
    absent = object()
    domains = [list(p.domain()) + [absent] for p in space.parameters]
    count = 0
    for values in itertools.product(*domains):
        config = {p.name: v for p, v in zip(space.parameters, values) if v is not absent}
        try:
            space.validate(config)
        except SearchSpaceError:
            continue
        count += 1
    return count


# -- TOML form ------------------------------------------------------------------------------------
def test_from_dict_parses_the_toml_form() -> None:
    space = SearchSpace.from_dict(TOML_EXAMPLE)
    assert space.names == ["lr", "width", "loss", "beta2"]
    assert isinstance(space["lr"], Float) and space["lr"].log
    assert space["width"].domain() == (8, 16, 32)
    assert space["beta2"].condition == {"loss": ["glf"]}
    assert not space.is_finite and space.size() is None
    assert SearchSpace.from_dict(space.to_dict()) == space


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"lr": {"type": "float", "low": "a", "high": 1}}, "space.lr.low: expected a finite number"),
        ({"lr": {"type": "float", "low": 1, "high": 0.1}}, "space.lr.high: expected low < high"),
        ({"lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "space.lr.low: a log-scale"),
        ({"lr": {"type": "float", "lo": 0, "high": 1}}, "space.lr.lo: unknown key for a float"),
        ({"lr": {"type": "float", "high": 1}}, "space.lr.low: missing"),
        ({"lr": {"low": 0, "high": 1}}, "space.lr.type: expected one of float, int, ordinal"),
        ({"lr": {"type": "real", "low": 0, "high": 1}}, "space.lr.type: expected one of"),
        ({"lr": 0.1}, "space.lr: expected a table with a 'type' key"),
        ({"n": {"type": "int", "low": 1.5, "high": 4}}, "space.n.low: expected an integer"),
        ({"w": {"type": "ordinal", "values": []}}, "space.w.values: expected a non-empty list"),
        ({"w": {"type": "ordinal", "values": [8, 8]}}, "space.w.values: 8 appears twice"),
        ({"c": {"type": "categorical", "choices": "dice"}}, "space.c.choices: expected a non-empty"),
        (
            {"loss": {"type": "categorical", "choices": ["dice"]},
             "b": {"type": "float", "low": 0, "high": 1, "condition": {"losss": ["dice"]}}},
            "space.b.condition.losss: names an unknown parameter 'losss' (did you mean 'loss'?)",
        ),
        (
            {"loss": {"type": "categorical", "choices": ["dice"]},
             "b": {"type": "float", "low": 0, "high": 1, "condition": {"loss": "dice"}}},
            "space.b.condition.loss: expected a list of values",
        ),
        (
            {"loss": {"type": "categorical", "choices": ["dice"]},
             "b": {"type": "float", "low": 0, "high": 1, "condition": {"loss": ["glf"]}}},
            "space.b.condition.loss: expected one of ['dice'], got 'glf'",
        ),
        (
            {"lr": {"type": "float", "low": 0, "high": 1},
             "b": {"type": "float", "low": 0, "high": 1, "condition": {"lr": [0.5]}}},
            "space.b.condition.lr: 'lr' is a float",
        ),
        (
            {"a": {"type": "categorical", "choices": [1, 2], "condition": {"b": [1]}},
             "b": {"type": "categorical", "choices": [1, 2], "condition": {"a": [1]}}},
            "form a cycle",
        ),
    ],
)
def test_from_dict_errors_name_the_key_path(table: dict, message: str) -> None:
    with pytest.raises(SearchSpaceError) as info:
        SearchSpace.from_dict(table)
    assert message in str(info.value)


def test_from_dict_uses_the_callers_key_path() -> None:
    with pytest.raises(SearchSpaceError, match=r"^search\.space\.lr\.high: "):
        SearchSpace.from_dict({"lr": {"type": "float", "low": 1, "high": 0}}, where="search.space")


# -- finite spaces --------------------------------------------------------------------------------
def test_enumeration_counts_conditionals() -> None:
    space = conditional_space()
    configs = list(space.enumerate())
    assert space.size() == len(configs) == 72 == brute_force_count(space)
    keys = {space.key(c) for c in configs}
    assert len(keys) == 72
    for config in configs:
        assert space.validate(config) == config
        assert ("alpha" in config) == (config["loss"] == "tversky")
        assert ("beta2" in config) == ("adaptive" in config) == (config["loss"] == "glf")
        assert ("rate" in config) == (config.get("adaptive") == "exploratory")
    # nested-loop order: the first parameter varies slowest
    assert [c["width"] for c in configs[:24]] == [8] * 24


def test_enumerate_refuses_infinite_spaces() -> None:
    space = SearchSpace.from_dict(TOML_EXAMPLE)
    with pytest.raises(SearchSpaceError, match="'lr', 'beta2' make the space infinite"):
        space.enumerate()
    grid = space.discretize({"lr": 4, "beta2": 2})
    assert grid.size() == 4 * 3 * (1 + 2)
    np.testing.assert_allclose(grid["lr"].domain(), [1e-4, 1e-3, 1e-2, 1e-1], rtol=1e-12)
    assert grid["lr"].domain()[0] == 1e-4 and grid["lr"].domain()[-1] == 0.1


@st.composite
def random_spaces(draw: st.DrawFn) -> SearchSpace:
    parameters = []
    for i in range(draw(st.integers(1, 4))):
        count = draw(st.integers(1, 3))
        condition = None
        if parameters and draw(st.booleans()):
            parent = draw(st.sampled_from(parameters))
            domain = list(parent.domain())
            chosen = draw(st.lists(st.sampled_from(domain), min_size=1, unique=True))
            condition = {parent.name: chosen}
        if draw(st.booleans()):
            parameters.append(Int(f"p{i}", 0, count - 1, condition=condition))
        else:
            parameters.append(Categorical(f"p{i}", [f"v{j}" for j in range(count)],
                                          condition=condition))
    return SearchSpace(parameters)


@settings(max_examples=60, deadline=None)
@given(random_spaces())
def test_size_matches_enumeration_and_brute_force(space: SearchSpace) -> None:
    configs = list(space.enumerate())
    assert space.size() == len(configs) == brute_force_count(space)
    assert len({space.key(c) for c in configs}) == len(configs)
    assert math.isclose(sum(space.probability(c) for c in configs), 1.0)


def test_sample_without_replacement_never_repeats() -> None:
    space = conditional_space()
    rng = np.random.default_rng(0)
    drawn = space.sample_without_replacement(72, rng)
    keys = [space.key(c) for c in drawn]
    assert len(set(keys)) == 72
    assert set(keys) == {space.key(c) for c in space.enumerate()}
    with pytest.raises(SearchSpaceError, match="cannot draw 73 distinct configurations"):
        space.sample_without_replacement(73, rng)
    infinite = SearchSpace.from_dict(TOML_EXAMPLE)
    assert len({infinite.key(c) for c in infinite.sample_without_replacement(300, rng)}) == 300


def test_unique_sampler_follows_the_prior_restricted_to_unseen() -> None:
    # uniform prior: the order of a finite space is a uniform random permutation
    space = SearchSpace([Int("x", 0, 9)])
    positions = np.zeros((3000, 10))
    for run in range(3000):
        sampler = UniqueSampler(space, np.random.default_rng(run))
        for k in range(10):
            positions[run, sampler.draw()["x"]] = k
        assert sampler.exhausted and sampler.draw() is None
    np.testing.assert_allclose(positions.mean(axis=0), 4.5, atol=4 * 2.87 / math.sqrt(3000))
    # marked configurations are never drawn
    sampler = UniqueSampler(space, np.random.default_rng(0))
    for x in range(0, 10, 2):
        sampler.mark({"x": x})
    assert sorted(sampler.draw()["x"] for _ in range(5)) == [1, 3, 5, 7, 9]


def test_log_int_prior() -> None:
    parameter = Int("batch", 1, 64, log=True)
    assert math.isclose(sum(parameter.probability(v) for v in parameter.domain()), 1.0)
    samples = [parameter.sample(np.random.default_rng(i)) for i in range(4000)]
    below_8 = np.mean(np.array(samples) < 8)
    expected = sum(parameter.probability(v) for v in range(1, 8))
    assert abs(below_8 - expected) < 4 * math.sqrt(expected * (1 - expected) / 4000)
    assert expected > 0.45  # log scale: half the mass is below sqrt(64)


def test_sample_respects_scales_and_conditions() -> None:
    space = SearchSpace.from_dict(TOML_EXAMPLE)
    rng = np.random.default_rng(0)
    samples = [space.sample(rng) for _ in range(2000)]
    for config in samples:
        assert space.validate(config) == config
        assert ("beta2" in config) == (config["loss"] == "glf")
    lr = np.array([c["lr"] for c in samples])
    assert abs(np.median(np.log10(lr)) - (-2.5)) < 0.1  # log-uniform on [1e-4, 1e-1]
    assert abs(np.mean([c["loss"] == "glf" for c in samples]) - 0.5) < 0.05


# -- configurations -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"lr": 0.01, "width": 8, "loss": "dice", "depth": 3},
         "parameter 'depth': not in the search space"),
        ({"lr": 0.01, "widht": 8, "loss": "dice"}, "(did you mean 'width'?)"),
        ({"lr": 0.01, "loss": "dice"}, "parameter 'width': missing"),
        ({"lr": 0.5, "width": 8, "loss": "dice"}, "parameter 'lr': 0.5 is outside [0.0001, 0.1]"),
        ({"lr": 0.01, "width": 12, "loss": "dice"}, "parameter 'width': expected one of [8, 16, 32]"),
        ({"lr": 0.01, "width": 8, "loss": "glf"},
         "parameter 'beta2': missing (it is active because loss='glf')"),
        ({"lr": 0.01, "width": 8, "loss": "dice", "beta2": 1.0},
         "parameter 'beta2': must be absent: it is only active when loss is one of ['glf'], "
         "and loss='dice'"),
        ({"lr": "fast", "width": 8, "loss": "dice"}, "parameter 'lr': expected a finite number"),
        ([("lr", 0.01)], "a configuration is a mapping"),
    ],
)
def test_validate_names_the_parameter(config: object, message: str) -> None:
    space = SearchSpace.from_dict(TOML_EXAMPLE)
    with pytest.raises(SearchSpaceError) as info:
        space.validate(config)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_key_is_canonical() -> None:
    space = SearchSpace([Int("depth", 1, 5), Float("lr", 0.0, 1.0), Ordinal("width", [8, 16])])
    a = space.key({"depth": 3, "lr": 1, "width": 16})
    b = space.key({"width": 16.0, "lr": 1.0, "depth": 3.0})
    assert a == b == '{"depth":3,"lr":1.0,"width":16}'
    assert json.loads(a) == space.validate({"depth": 3, "lr": 1, "width": 16})
    boolean = SearchSpace([Categorical("flag", [True, 1])])  # True and 1 are distinct choices
    assert boolean.key({"flag": True}) != boolean.key({"flag": 1})


def test_neighbours_are_valid_and_differ_in_one_parameter() -> None:
    for space in (conditional_space(), SearchSpace.from_dict(TOML_EXAMPLE)):
        rng = np.random.default_rng(1)
        for _ in range(100):
            config = space.sample(rng)
            neighbours = space.neighbours(config)
            assert neighbours
            keys = {space.key(n) for n in neighbours}
            assert len(keys) == len(neighbours) and space.key(config) not in keys
            for neighbour in neighbours:
                assert space.validate(neighbour) == neighbour
                shared = set(config) & set(neighbour)
                changed = [n for n in shared if config[n] != neighbour[n]]
                assert len(changed) == 1


def test_neighbours_by_kind() -> None:
    space = SearchSpace([
        Ordinal("width", [8, 16, 32]),
        Categorical("loss", ["dice", "tversky", "glf"]),
        Int("depth", 1, 4),
        Float("lr", 0.0, 1.0, step=0.25),
    ])
    config = {"width": 8, "loss": "glf", "depth": 2, "lr": 0.9}
    moved = sorted((n, c[n]) for c in space.neighbours(config) for n in c if c[n] != config[n])
    assert moved == sorted([("width", 16), ("loss", "dice"), ("loss", "tversky"), ("depth", 1),
                            ("depth", 3), ("lr", 0.65), ("lr", 1.0)])


def test_neighbour_activating_a_child_uses_its_default() -> None:
    space = SearchSpace.from_dict(TOML_EXAMPLE)
    neighbours = space.neighbours({"lr": 0.01, "width": 16, "loss": "dice"})
    glf = [n for n in neighbours if n["loss"] == "glf"]
    assert glf == [{"lr": 0.01, "width": 16, "loss": "glf", "beta2": 1.25}]


def test_mutation() -> None:
    space = SearchSpace([Categorical(f"c{i}", ["a", "b", "c"]) for i in range(10)])
    parent = {f"c{i}": "a" for i in range(10)}
    rng = np.random.default_rng(0)
    changed = lambda child: sum(child[n] != parent[n] for n in parent)  # noqa: E731
    assert all(changed(space.mutate(parent, 0.0, rng)) == 1 for _ in range(50))  # at least one
    assert all(changed(space.mutate(parent, 1.0, rng)) == 10 for _ in range(50))
    counts = [changed(space.mutate(parent, 0.3, rng)) for _ in range(2000)]
    expected = 3.0 + 0.7**10  # Binomial(10, 0.3), with one forced change when none was drawn
    assert abs(np.mean(counts) - expected) < 0.1
    with pytest.raises(SearchSpaceError, match="mutation rate"):
        space.mutate(parent, 1.5, rng)


def test_mutation_keeps_configurations_valid() -> None:
    for space in (conditional_space(), SearchSpace.from_dict(TOML_EXAMPLE)):
        rng = np.random.default_rng(2)
        config = space.sample(rng)
        for _ in range(300):
            child = space.mutate(config, 0.5, rng)
            assert space.validate(child) == child
            assert child != config
            config = child
