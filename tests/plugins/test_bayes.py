"""The ``bayes`` searcher: GP Bayesian optimisation behind ask/tell."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import medtune
import medtune.search.gp as gp_module
from medtune.plugins.searchers import Searcher, SearcherError
from medtune.plugins.searchers.bayes import BayesSearcher
from medtune.search import Categorical, Float, Int, Ordinal, SearchSpace
from medtune.search.gp import GPHyper
from medtune.search.space import SearchSpaceError
from tests.plugins.test_searchers import drive

BRANIN_MINIMUM = 0.397887
BRANIN_SPACE = SearchSpace([Float("x1", -5.0, 10.0), Float("x2", 0.0, 15.0)])
# 3 x 4 x 5 = 60 configurations
FINITE_SPACE = SearchSpace([Int("a", 0, 2), Ordinal("b", [1, 2, 4, 8]), Int("c", 10, 14)])
# cheap candidate search for the tests of bookkeeping (the defaults are tested on Branin)
FAST = {"candidates": 128, "local_candidates": 32, "refine_steps": 10}


def branin(config: dict) -> float:
    x1, x2 = config["x1"], config["x2"]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def tabulated(config: dict) -> float:
    """A smooth function of FINITE_SPACE plus fixed noise: one best configuration, (2, 4, 13)."""
    a, b, c = config["a"], math.log2(config["b"]), config["c"]
    noise = math.sin(97.0 * a + 31.0 * b + 7.0 * c) * 0.01
    return (a - 1.8) ** 2 + 0.5 * (b - 2.1) ** 2 + 0.3 * (c - 12.8) ** 2 + noise


def mixed_space() -> SearchSpace:
    return SearchSpace([
        Float("lr", 1e-4, 1e-1, log=True),
        Int("batch", 1, 256, log=True),
        Ordinal("width", [8, 16, 32, 64]),
        Categorical("loss", ["dice", "glf", "ce"]),
        Float("beta2", 0.5, 2.0, condition={"loss": ["glf"]}),
    ])


def mixed_objective(config: dict) -> float:
    value = (math.log10(config["lr"]) + 2.5) ** 2 + abs(math.log2(config["batch"]) - 4) / 4
    value += abs(config["width"] - 32) / 32
    return value + (abs(config["beta2"] - 1.0) if config["loss"] == "glf" else 0.3)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fixed_hyper(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace the marginal-likelihood fit by fixed hyper-parameters (fast bookkeeping tests);
    returns the list of the sizes of the data sets each fit was given."""
    fits: list[int] = []

    def fit(x, y, kernel="matern52", restarts=2, seed=0, start=None, max_iter=50):
        fits.append(x.shape[0])
        return GPHyper(tuple(0.3 for _ in range(x.shape[1])), 1.0, 1e-4, 0.0, kernel)

    monkeypatch.setattr(gp_module, "fit_hyperparameters", fit)
    return fits


def keys(space: SearchSpace, history: list) -> list[str]:
    return [space.key(s.config) for s, _ in history]


# -- registration and options -----------------------------------------------------------------
def test_bayes_is_registered() -> None:
    assert "bayes" in medtune.available("searcher")
    searcher = medtune.create("searcher", "bayes", space=BRANIN_SPACE, seed=0,
                              direction="maximize", kernel="rbf", acquisition="ucb")
    assert isinstance(searcher, BayesSearcher) and isinstance(searcher, Searcher)
    assert (searcher.direction, searcher.kernel, searcher.acquisition) == ("maximize", "rbf", "ucb")
    assert searcher.n_initial == 5  # max(5, dim + 1) for a 2-d space


def test_default_initial_design_grows_with_the_dimension() -> None:
    space = SearchSpace([Float(f"x{i}", 0.0, 1.0) for i in range(8)])
    assert BayesSearcher(space).n_initial == 9
    space = SearchSpace([Float(f"x{i}", 0.0, 1.0) for i in range(30)])
    assert BayesSearcher(space).n_initial == 20


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kernel": "matern32"}, "bayes: kernel must be one of matern52, rbf, got 'matern32'"),
        ({"acquisition": "kg"}, "bayes: acquisition must be one of ei, pi, ucb, got 'kg'"),
        ({"parallel": "qei"}, "bayes: parallel must be one of liar, believer, sample"),
        ({"liar": "median"}, "bayes: liar must be one of worst, mean, best, got 'median'"),
        ({"n_initial": 0}, "bayes: n_initial must be an integer >= 1, got 0"),
        ({"n_initial": 2.5}, "bayes: n_initial must be an integer >= 1, got 2.5"),
        ({"n_initial": True}, "bayes: n_initial must be an integer >= 1, got True"),
        ({"refit_every": 0}, "bayes: refit_every must be an integer >= 1"),
        ({"restarts": -1}, "bayes: restarts must be an integer >= 0"),
        ({"candidates": 0}, "bayes: candidates must be an integer >= 1"),
        ({"fit_subsample": 1}, "bayes: fit_subsample must be an integer >= 2"),
        ({"xi": -0.1}, "bayes: xi must be a number >= 0"),
        ({"beta": math.nan}, "bayes: beta must be a number >= 0"),
        ({"refit_growth": "fast"}, "bayes: refit_growth must be a number >= 0"),
        ({"direction": "down"}, "bayes: direction must be 'minimize' or 'maximize'"),
        ({"on_failure": "ignore"}, "bayes: on_failure must be 'exclude'"),
    ],
)
def test_option_errors_name_the_option(options: dict, message: str) -> None:
    with pytest.raises(SearcherError, match=message.replace("(", r"\(")):
        medtune.create("searcher", "bayes", space=BRANIN_SPACE, seed=0, **options)


# -- optimisation quality ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def branin_runs() -> dict[str, list[float]]:
    """Best value after 40 evaluations of Branin, default options, seeds 0-2."""
    best: dict[str, list[float]] = {"bayes": [], "random": []}
    for name in best:
        for seed in range(3):
            searcher = medtune.create("searcher", name, space=BRANIN_SPACE, seed=seed)
            history = drive(searcher, branin, 40)
            assert len(history) == 40
            best[name].append(searcher.best[1])
            assert searcher.best[1] == min(v for _, v in history)
    return best


def test_bayes_minimises_branin(branin_runs: dict[str, list[float]]) -> None:
    bayes = np.array(branin_runs["bayes"])
    assert (bayes >= BRANIN_MINIMUM - 1e-6).all()
    assert ((bayes - BRANIN_MINIMUM) / BRANIN_MINIMUM < 0.01).sum() >= 2, bayes
    assert np.median(bayes) < np.median(branin_runs["random"]), branin_runs


def test_maximize_finds_the_maximum_of_minus_branin(fixed_hyper: list[int]) -> None:
    searcher = medtune.create("searcher", "bayes", space=BRANIN_SPACE, seed=1,
                              direction="maximize", **FAST)
    history = drive(searcher, lambda c: -branin(c), 30)
    config, value = searcher.best
    assert value == max(v for _, v in history) and value > -0.5
    assert value == pytest.approx(-branin(config))
    # the tag predicts the score the searcher minimises (with its noise): -value, positive here
    suggestion = searcher.ask()
    mean, variance = searcher.gp.predict(searcher.encoder.encode([suggestion.config]), noise=True)
    assert suggestion.tag["model"]["mean"] == pytest.approx(float(mean))
    assert suggestion.tag["model"]["std"] == pytest.approx(math.sqrt(float(variance)))
    assert suggestion.tag["model"]["mean"] > 0


def test_finite_space_is_scored_exhaustively(fixed_hyper: list[int]) -> None:
    searcher = medtune.create("searcher", "bayes", space=FINITE_SPACE, seed=0)
    scored: list[torch.Tensor] = []
    acquisition = searcher.gp.acquisition

    def spy(x, *args, **kwargs):
        result = acquisition(x, *args, **kwargs)
        scored.append(result.score)
        return result

    searcher.gp.acquisition = spy
    history = []
    for _ in range(60):
        suggestion = searcher.ask()
        assert suggestion is not None
        if suggestion.tag["model"] is not None:  # every untried configuration was scored
            assert scored[-1].shape[0] == 60 - len(history)
            assert suggestion.tag["model"]["acquisition"] == pytest.approx(float(scored[-1].max()))
        value = tabulated(suggestion.config)
        searcher.tell(suggestion, value)
        history.append((suggestion, value))
    assert len(history) == 60 and searcher.finished and searcher.ask() is None
    assert sorted(keys(FINITE_SPACE, history)) == sorted(
        FINITE_SPACE.key(c) for c in FINITE_SPACE.enumerate())
    assert sum(s.tag["model"] is None for s, _ in history) == searcher.n_initial
    assert searcher.best == ({"a": 2, "b": 4, "c": 13}, tabulated({"a": 2, "b": 4, "c": 13}))


def evaluations_to_best(name: str, seed: int) -> int:
    searcher = medtune.create("searcher", name, space=FINITE_SPACE, seed=seed)
    target = {"a": 2, "b": 4, "c": 13}
    for count in range(1, 61):
        suggestion = searcher.ask()
        searcher.tell(suggestion, tabulated(suggestion.config))
        if suggestion.config == target:
            return count
    raise AssertionError(f"{name} never proposed the best configuration")


def test_bayes_finds_the_best_of_a_finite_space_faster_than_random() -> None:
    assert min(FINITE_SPACE.enumerate(), key=tabulated) == {"a": 2, "b": 4, "c": 13}
    seeds = range(3)
    bayes = [evaluations_to_best("bayes", seed) for seed in seeds]
    random = [evaluations_to_best("random", seed) for seed in seeds]
    assert np.median(bayes) <= 20 and np.median(bayes) < np.median(random), (bayes, random)


# -- suggestions --------------------------------------------------------------------------------
def test_mixed_space_suggestions_are_valid_and_new(fixed_hyper: list[int]) -> None:
    space = mixed_space()
    searcher = medtune.create("searcher", "bayes", space=space, seed=2, **FAST)
    history = drive(searcher, mixed_objective, 30)
    assert searcher.n_initial == 8  # 7 encoded coordinates + 1
    assert sum(s.tag["model"] is not None for s, _ in history) == 30 - 8
    for suggestion, _ in history:
        assert space.validate(suggestion.config) == suggestion.config
        assert suggestion.resource is None
    assert len(set(keys(space, history))) == 30
    assert {s.config["loss"] for s, _ in history} == {"dice", "glf", "ce"}
    assert searcher.best[1] < min(v for _, v in history[:8])  # the model helped


@pytest.mark.parametrize(("acquisition", "kernel"), [("pi", "rbf"), ("ucb", "matern52")])
def test_other_acquisitions_and_kernels(fixed_hyper: list[int], acquisition: str,
                                        kernel: str) -> None:
    searcher = medtune.create("searcher", "bayes", space=BRANIN_SPACE, seed=0,
                              acquisition=acquisition, kernel=kernel, **FAST)
    history = drive(searcher, branin, 15)
    assert searcher.gp.hyper.kernel == kernel
    assert len(set(keys(BRANIN_SPACE, history))) == 15
    for suggestion, _ in history[5:]:
        assert math.isfinite(suggestion.tag["model"]["acquisition"])


def test_tags_describe_the_model(fixed_hyper: list[int]) -> None:
    space = mixed_space()
    searcher = medtune.create("searcher", "bayes", space=space, seed=0, **FAST)
    history = drive(searcher, mixed_objective, 12)
    for told, (suggestion, _) in enumerate(history):
        model = suggestion.tag["model"]
        if told < searcher.n_initial:
            assert model is None
            continue
        assert set(model) == {"mean", "std", "acquisition", "observations", "relevance"}
        assert model["observations"] == told
        assert set(model["relevance"]) == set(space.names)
        assert all(v > 0 and math.isfinite(v) for v in model["relevance"].values())
        assert model["std"] >= 0 and math.isfinite(model["mean"])
        assert json.loads(json.dumps(suggestion.tag)) == suggestion.tag
    # relevance per parameter: a category's largest column; 1 / 0.3 under fixed_hyper
    assert history[-1][0].tag["model"]["relevance"]["loss"] == pytest.approx(1 / 0.3)


def test_same_seed_and_tells_give_the_same_suggestions() -> None:
    def run(seed: int) -> list[tuple[dict, dict]]:
        searcher = medtune.create("searcher", "bayes", space=BRANIN_SPACE, seed=seed,
                                  candidates=256, local_candidates=64)
        return [(s.config, s.tag) for s, _ in drive(searcher, branin, 9)]

    first = run(3)
    assert run(3) == first
    assert run(4) != first


# -- parallel suggestions -----------------------------------------------------------------------
@pytest.mark.parametrize("parallel", ["liar", "believer", "sample"])
def test_parallel_suggestions_are_distinct(fixed_hyper: list[int], parallel: str) -> None:
    searcher = medtune.create("searcher", "bayes", space=BRANIN_SPACE, seed=0,
                              parallel=parallel, **FAST)
    drive(searcher, branin, 8)
    sizes: list[int] = []  # observations in the GP when the candidates are scored
    acquisition = searcher.gp.acquisition

    def spy(x, *args, **kwargs):
        if x.shape[0] > 100:  # the candidates (not a refinement or a believer's prediction)
            sizes.append(searcher.gp.n)
        return acquisition(x, *args, **kwargs)

    searcher.gp.acquisition = spy
    batch = [searcher.ask() for _ in range(4)]
    assert len(searcher.pending) == 4
    assert len({BRANIN_SPACE.key(s.config) for s in batch}) == 4
    assert all(s.tag["model"]["observations"] == 8 for s in batch)
    assert searcher.gp.n == 8  # the fantasies of pending suggestions are dropped after each ask
    # liar and believer: each pending suggestion is a fantasy while the next one is chosen
    assert sizes == ([8, 8, 8, 8] if parallel == "sample" else [8, 9, 10, 11])
    for suggestion in batch:
        searcher.tell(suggestion, branin(suggestion.config))
    searcher.ask()
    assert searcher.gp.n == 12
    assert torch.allclose(searcher.gp.y[8:], torch.tensor([branin(s.config) for s in batch],
                                                          dtype=torch.float64))


@pytest.mark.parametrize(("parallel", "liar"), [("liar", "worst"), ("liar", "mean"),
                                                ("liar", "best"), ("believer", "worst")])
def test_fantasy_values(fixed_hyper: list[int], parallel: str, liar: str) -> None:
    searcher = medtune.create("searcher", "bayes", space=BRANIN_SPACE, seed=0,
                              direction="maximize", parallel=parallel, liar=liar, **FAST)
    history = drive(searcher, lambda c: -branin(c), 8)
    scores = np.array([-v for _, v in history])  # the searcher minimises -value
    pending = searcher.ask()
    appended: list[tuple[torch.Tensor, torch.Tensor]] = []
    append = searcher.gp.append

    def spy(x, y):
        appended.append((x.clone(), torch.as_tensor(y, dtype=torch.float64).reshape(-1)))
        append(x, y)

    searcher.gp.append = spy
    searcher.ask()
    (x, y), = appended
    assert torch.equal(x, searcher.encoder.encode([pending.config]))
    if parallel == "believer":
        mean, _ = searcher.gp.predict(x)
        assert float(y) == pytest.approx(float(mean), rel=1e-9)
    else:
        lie = {"worst": scores.max(), "mean": scores.mean(), "best": scores.min()}[liar]
        assert float(y) == pytest.approx(lie, rel=1e-12)


# -- failures -----------------------------------------------------------------------------------
def test_excluded_failures_are_not_modelled_nor_proposed_again(fixed_hyper: list[int]) -> None:
    searcher = medtune.create("searcher", "bayes", space=FINITE_SPACE, seed=0)
    failed_keys = []
    told = 0
    history = []
    for _ in range(60):
        suggestion = searcher.ask()
        assert suggestion is not None
        history.append(suggestion)
        if suggestion.tag["model"] is not None:
            assert searcher.gp.n == told  # failures are not in the model
            assert searcher.gp.y.max() < 10
        if suggestion.config["c"] == 14 or suggestion.config["a"] == 0:
            searcher.tell(suggestion, None)  # a failed trial
            failed_keys.append(FINITE_SPACE.key(suggestion.config))
        else:
            searcher.tell(suggestion, tabulated(suggestion.config))
            told += 1
    all_keys = [FINITE_SPACE.key(s.config) for s in history]
    assert len(all_keys) == len(set(all_keys)) == 60
    assert searcher.finished and searcher.ask() is None
    assert len(failed_keys) == 60 - 32  # a = 0 or c = 14
    assert searcher.best[0] == {"a": 2, "b": 4, "c": 13}


def test_penalized_failures_are_modelled_with_the_penalty(fixed_hyper: list[int]) -> None:
    searcher = medtune.create("searcher", "bayes", space=BRANIN_SPACE, seed=0,
                              on_failure="penalize", penalty=500.0, **FAST)
    history = drive(searcher, branin, 8)
    suggestion = searcher.ask()
    searcher.tell(suggestion, None, failed=True)
    searcher.ask()
    assert searcher.gp.n == 9
    assert float(searcher.gp.y[-1]) == pytest.approx(500.0)
    assert torch.equal(searcher.gp.x[-1], searcher.encoder.encode([suggestion.config])[0])
    assert searcher.best[1] == min(v for _, v in history)  # a penalty is not a result
    # without an explicit penalty, a failure counts as the worst value so far
    searcher = medtune.create("searcher", "bayes", space=BRANIN_SPACE, seed=0,
                              on_failure="penalize", **FAST)
    history = drive(searcher, branin, 8)
    searcher.tell(searcher.ask(), math.nan)
    searcher.ask()
    assert searcher.gp.n == 9
    assert float(searcher.gp.y[-1]) == pytest.approx(max(v for _, v in history))


# -- warm start ---------------------------------------------------------------------------------
def test_warm_start_feeds_the_model(fixed_hyper: list[int]) -> None:
    rng = np.random.default_rng(0)
    configs = [BRANIN_SPACE.sample(rng) for _ in range(12)]
    values = [branin(c) for c in configs]
    searcher = medtune.create("searcher", "bayes", space=BRANIN_SPACE, seed=0, **FAST)
    searcher.warm_start(configs, values)
    assert searcher.best == (configs[int(np.argmin(values))], min(values))
    suggestion = searcher.ask()
    assert searcher.gp.n == 12 and suggestion.tag["model"] is not None
    assert suggestion.tag["model"]["observations"] == 12
    assert torch.allclose(searcher.gp.y, torch.tensor(values, dtype=torch.float64))
    assert BRANIN_SPACE.key(suggestion.config) not in {BRANIN_SPACE.key(c) for c in configs}


def test_warm_start_on_a_finite_space_marks_configurations_tried(fixed_hyper: list[int]) -> None:
    configs = list(FINITE_SPACE.enumerate())[:50]
    searcher = medtune.create("searcher", "bayes", space=FINITE_SPACE, seed=0,
                              direction="maximize")
    searcher.warm_start(configs, [-tabulated(c) for c in configs])
    history = drive(searcher, lambda c: -tabulated(c), 100)
    assert len(history) == 10 and searcher.finished
    assert not {FINITE_SPACE.key(s.config) for s, _ in history} & {
        FINITE_SPACE.key(c) for c in configs}


def test_warm_start_rejects_bad_inputs() -> None:
    searcher = medtune.create("searcher", "bayes", space=BRANIN_SPACE, seed=0)
    config = {"x1": 0.0, "x2": 1.0}
    with pytest.raises(SearcherError, match="warm_start got 2 configurations and 1 values"):
        searcher.warm_start([config, config], [1.0])
    with pytest.raises(SearcherError, match="must be a finite number, got nan"):
        searcher.warm_start([config], [math.nan])
    with pytest.raises(SearcherError, match="must be a finite number, got 'low'"):
        searcher.warm_start([config], ["low"])
    with pytest.raises((SearcherError, SearchSpaceError), match="x1"):
        searcher.warm_start([{"x1": 20.0, "x2": 1.0}], [1.0])
    assert searcher.best is None and searcher.ask().tag["model"] is None


# -- refit schedule -----------------------------------------------------------------------------
def test_refits_follow_the_schedule_and_observations_are_appended_between(
        fixed_hyper: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    refits: list[int] = []
    refit = BayesSearcher.refit

    def counting(self: BayesSearcher) -> None:
        refits.append(len(self._scores))
        refit(self)

    monkeypatch.setattr(BayesSearcher, "refit", counting)
    searcher = medtune.create("searcher", "bayes", space=BRANIN_SPACE, seed=0,
                              refit_every=1, refit_growth=0.1, **FAST)
    told = 0
    for _ in range(60):
        suggestion = searcher.ask()
        if suggestion.tag["model"] is not None:
            assert searcher.gp.n == told  # refit or appended: every observation is modelled
        searcher.tell(suggestion, branin(suggestion.config))
        told += 1
    # refit when the observations since the last fit reach max(1, 0.1 * observations then)
    expected, fitted = [], 0
    for n in range(5, 60):
        if fitted == 0 or n - fitted >= max(1, 0.1 * fitted):
            expected.append(n)
            fitted = n
    assert refits == expected
    assert fixed_hyper == expected
    assert len(refits) < 30 and refits[:6] == [5, 6, 7, 8, 9, 10]
    # a larger refit_every refits less often
    refits.clear()
    searcher = medtune.create("searcher", "bayes", space=BRANIN_SPACE, seed=0,
                              refit_every=10, refit_growth=0.0, **FAST)
    drive(searcher, branin, 40)
    assert refits == [5, 15, 25, 35]


def test_two_process_workers_stay_busy_with_fantasies(tmp_path, monkeypatch):
    """A study with two process workers: after the initial phase the searcher is asked while
    a trial is still running, and its suggestion (with that trial as a fantasy) runs in
    parallel with it."""
    from medtune.study import RunOptions, StudyStore, TrialState, run_study

    monkeypatch.setenv("MEDTUNE_TEST_SLEEP", "0.3")
    space = SearchSpace([Float("x", -2.0, 2.0)])
    searcher = medtune.create("searcher", "bayes", space=space, seed=0, n_initial=2,
                              restarts=0, **FAST)
    with StudyStore.create(tmp_path / "s.db") as store:
        summary = run_study(store, searcher, "tests.framework.study_fakes:sleeps",
                            RunOptions(executor="process", n_trials=8, n_workers=2,
                                       progress=False))
        assert summary.n_complete == 8
        trials = sorted(store.trials([TrialState.COMPLETE]), key=lambda t: t.started)
    modelled = [t for t in trials if t.tag.get("model")]
    assert len(modelled) >= 5
    overlaps = sum(
        1 for a, b in zip(modelled, modelled[1:]) if b.started < a.finished
    )
    assert overlaps >= 2, "model-based trials never ran side by side"
    xs = [t.config["x"] for t in trials]
    assert len(set(xs)) == len(xs)
