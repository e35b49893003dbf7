"""The ``optuna`` searcher: Optuna's samplers through medtune's ask/tell (it also passes the
contract suite of tests/plugins/test_searchers.py); Optuna is the extra ``medtune[optuna]``."""

from __future__ import annotations

import math
import sys

import pytest

import medtune
from medtune.cli import main
from medtune.search import SearcherError
from medtune.study import RunOptions, StudyStore, resume_study, run_study
from tests.plugins.test_searchers import interleaved, mixed_objective, mixed_space

optuna = pytest.importorskip("optuna")

SAMPLER_CLASSES = {"tpe": "TPESampler", "cmaes": "CmaEsSampler", "nsga2": "NSGAIISampler",
                   "qmc": "QMCSampler", "gp": "GPSampler"}
#: options that let the seed matter (QMC's Sobol points are only scrambled on demand)
SEEDED = {"qmc": {"scramble": True}}


def make(sampler: str = "tpe", **arguments):
    return medtune.create("searcher", "optuna", space=mixed_space(), sampler=sampler,
                          **{**SEEDED.get(sampler, {}), **arguments})


@pytest.mark.parametrize("sampler", list(SAMPLER_CLASSES))
def test_each_sampler_proposes_valid_configurations_reproducibly(sampler):
    searcher = make(sampler, seed=1)
    assert type(searcher.study.sampler).__name__ == SAMPLER_CLASSES[sampler]

    def build(**arguments):
        return make(sampler, **arguments)

    first = interleaved(build, seed=5)  # out-of-order tells, failures, 3 outstanding
    asks = [event for event in first if event[0] == "ask"]
    assert len(asks) >= 20
    assert all(mixed_space().validate(config) == config and resource is None
               for _, _, config, resource, _ in asks)
    assert first == interleaved(build, seed=5)
    assert first != interleaved(build, seed=6)


def test_the_space_maps_to_optuna_distributions():
    searcher = make(seed=0)
    configs = []
    for _ in range(12):
        suggestion = searcher.ask()
        searcher.tell(suggestion, mixed_objective(suggestion.config))
        configs.append(suggestion.config)
    for trial, config in zip(searcher.study.trials, configs, strict=True):
        assert config == {**trial.params, "width": [8, 16, 32][trial.params["width"]]}
        distributions = trial.distributions
        assert distributions["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
        # an ordinal is suggested by index, so that the samplers keep its order
        assert distributions["width"] == optuna.distributions.IntDistribution(0, 2)
        assert distributions["loss"] == optuna.distributions.CategoricalDistribution(
            ("dice", "glf"))
        assert ("beta2" in trial.params) == (trial.params["loss"] == "glf")


def test_sampler_options_are_passed_on_and_unknown_ones_refused():
    searcher = make(seed=3, n_startup_trials=5, n_ei_candidates=8)
    assert searcher.sampler_options == {"n_startup_trials": 5, "n_ei_candidates": 8}
    assert searcher.study.sampler._n_startup_trials == 5
    with pytest.raises(SearcherError) as error:
        make(n_startup=5)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("optuna: sampler 'tpe' has no option 'n_startup' (did you mean "
                              "'n_startup_trials'?); it takes ")
    assert "n_ei_candidates" in message and "seed," not in message
    with pytest.raises(SearcherError, match="^optuna: sampler 'cmaes' has no option 'gamma'"):
        make("cmaes", gamma=0.1)
    with pytest.raises(SearcherError, match="^optuna: sampler 'qmc': "):
        make("qmc", qmc_type="lattice")
    # a per-trial warning Optuna gives when it samples a parameter independently: off
    assert make("cmaes").sampler_options == {"warn_independent_sampling": False}
    assert make("cmaes", warn_independent_sampling=True).sampler_options == {
        "warn_independent_sampling": True}


def test_an_unknown_sampler_is_refused_in_one_line():
    with pytest.raises(SearcherError, match=r"^optuna: sampler must be one of tpe, cmaes, nsga2, "
                                            r"qmc, gp, got 'tpe2' \(did you mean 'tpe'\?\)$"):
        make("tpe2")


def test_without_optuna_the_searcher_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    with pytest.raises(SearcherError, match=r"^the optuna searcher needs Optuna, which is not "
                                            r"installed: pip install 'medtune\[optuna\]'$"):
        make()


def test_cmaes_without_its_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cmaes", None)
    with pytest.raises(SearcherError, match=r"^optuna: sampler 'cmaes' needs the cmaes package, "
                                            r"which is not installed: pip install "
                                            r"'medtune\[optuna\]'$"):
        make("cmaes")


@pytest.mark.parametrize(("problem", "message"), [
    ('sampler = "tpx"', "error: optuna: sampler must be one of tpe, cmaes, nsga2, qmc, gp, got "
                        "'tpx' (did you mean 'tpe'?)"),
    ('sampler = "tpe"\nn_startup = 3', "error: optuna: sampler 'tpe' has no option 'n_startup'"),
    ("optuna missing", "error: the optuna searcher needs Optuna, which is not installed: pip "
                       "install 'medtune[optuna]'"),
])
def test_a_bad_optuna_searcher_stops_a_run_before_anything_is_written(
        problem, message, tmp_path, capsys, monkeypatch):
    storage = tmp_path / "studies" / "opt.sqlite"
    options = 'sampler = "tpe"' if problem == "optuna missing" else problem
    if problem == "optuna missing":
        monkeypatch.setitem(sys.modules, "optuna", None)
    config = tmp_path / "opt.toml"
    config.write_text(
        f'[study]\nname = "opt"\nn_trials = 3\nstorage = "{storage}"\n\n'
        f'[searcher]\nname = "optuna"\n{options}\n\n'
        '[objective]\nfunction = "tests.framework.study_fakes:quadratic"\n\n'
        '[space.x]\ntype = "float"\nlow = -1.0\nhigh = 1.0\n')
    assert main(["run", str(config)]) == 2
    out = capsys.readouterr().out
    assert out.startswith(message) and out.count("\n") == 1
    assert not storage.parent.exists()


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_failures_and_direction_reach_optuna_as_medtune_scores_them(direction):
    sign = 1.0 if direction == "minimize" else -1.0
    States = optuna.trial.TrialState
    for policy, penalty in (("exclude", None), ("penalize", 7.0)):
        searcher = make(seed=0, direction=direction, on_failure=policy, penalty=penalty)
        first, failed = searcher.ask(), searcher.ask()
        searcher.tell(failed, None, failed=True)
        searcher.tell(first, sign * 2.0)
        trials = searcher.study.trials
        # the in-memory Optuna study minimises the score: the value, negated to maximise
        assert searcher.study.direction == optuna.study.StudyDirection.MINIMIZE
        assert (trials[0].state, trials[0].value) == (States.COMPLETE, 2.0)
        if policy == "exclude":
            assert (trials[1].state, trials[1].value) == (States.FAIL, None)
        else:  # the penalty, as a score
            assert (trials[1].state, trials[1].value) == (States.COMPLETE, sign * 7.0)
        assert searcher.best == (first.config, sign * 2.0)


def test_the_default_penalty_before_any_result_is_an_infinite_score():
    searcher = make(seed=0, on_failure="penalize")
    failed = searcher.ask()
    searcher.tell(failed, math.nan)
    assert searcher.study.trials[0].value == math.inf
    for _ in range(12):  # TPE goes on past its random start with an infinite score in its data
        suggestion = searcher.ask()
        searcher.tell(suggestion, mixed_objective(suggestion.config))
    assert searcher.best[1] == min(t.value for t in searcher.study.trials)


def test_optuna_logs_nothing_per_trial(capfd):
    verbosity = optuna.logging.get_verbosity()
    searcher = make("cmaes", seed=0)  # CMA-ES samples `loss` independently each trial
    for _ in range(5):
        suggestion = searcher.ask()
        searcher.tell(suggestion, mixed_objective(suggestion.config))
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert optuna.logging.get_verbosity() == verbosity  # quietened only while creating


def peak(config, resource, seed, report) -> float:
    return -mixed_objective(config)


@pytest.mark.parametrize("sampler", ["tpe", "gp"])
def test_a_resumed_study_continues_as_if_never_stopped(sampler, tmp_path):
    options = {"n_startup_trials": 3}

    def build(seed):
        return make(sampler, seed=seed, direction="maximize", **options)

    def configs(path):
        with StudyStore(path, read_only=True) as store:
            return [(t.config, t.value) for t in store.trials()]

    straight, stopped = tmp_path / "straight.db", tmp_path / "stopped.db"
    for path, n_trials in ((straight, 8), (stopped, 4)):
        with StudyStore.create(path, direction="maximize", seed=11) as store:
            run_study(store, build(store.seed), peak, RunOptions(n_trials=n_trials,
                                                                 progress=False))
    summary = resume_study(stopped, build, peak, RunOptions(n_trials=8, progress=False))
    assert summary.n_complete == 8
    assert configs(stopped) == configs(straight)
