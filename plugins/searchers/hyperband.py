"""Hyperband (Bertrand2019, sec. 2.5.1; Li et al. 2017): successive halving over brackets.

With a maximum resource ``R`` per configuration (epochs, minutes) and a reduction factor
``eta``, Hyperband runs s_max + 1 brackets, s_max = floor(log_eta R), from the most
aggressive (s = s_max) to plain full training (s = 0). Bracket s starts
n = ceil((s_max + 1) eta^s / (s + 1)) configurations with r = R eta^-s each; at rung i it
trains n_i = floor(n eta^-i) configurations with r_i = r eta^i and promotes the best
floor(n_i / eta) to the next rung, until rung s trains the survivors with R. For R = 81 and
eta = 3 (Li et al., table 1)::

    s = 4: (81, 1) (27, 3) (9, 9) (3, 27) (1, 81)
    s = 3: (34, 3) (11, 9) (3, 27) (1, 81)
    s = 2: (15, 9) (5, 27) (1, 81)
    s = 1: (8, 27) (2, 81)
    s = 0: (5, 81)

Configurations are proposed by another searcher (``searcher="random"`` by default; any name
of kind ``searcher`` works, with its options passed through, and it is built with this
searcher's seed, direction and failure policy). Each rung's evaluations are
separate suggestions whose ``resource`` is r_i and whose ``tag`` holds the ``iteration``,
``bracket`` (s), ``rung`` (i), ``promoted_from`` (the id of the suggestion at the previous
rung) and ``origin`` (the id at rung 0). Results may arrive in any order: a rung is decided
once all its results are in. The proposing searcher is told each configuration's first result
(at its bracket's smallest resource) as soon as it arrives, so that adaptive proposers (local
search, evolution) keep proposing while rungs fill; what they learn mixes the resources of
different brackets.

Failures: under ``on_failure="exclude"`` a failed trial is never promoted; under
``"penalize"`` it is ranked with the penalty value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from medtune.search.searcher import (
    Proposal,
    Searcher,
    SearcherError,
    Suggestion,
    split_options,
)
from medtune.search.space import SearchSpace


@dataclass(frozen=True)
class BracketPlan:
    """The planned rungs of one bracket: ``rungs[i] = (n_i, r_i)``."""

    s: int
    rungs: tuple[tuple[int, float], ...]

    @property
    def budget(self) -> float:
        """Total resource the bracket uses when every rung is full."""
        return sum(n * r for n, r in self.rungs)


def _max_bracket(R: float, eta: float) -> int:
    """s_max = floor(log_eta R), computed without floating-point surprises at exact powers."""
    s = 0
    while eta ** (s + 1) <= R * (1 + 1e-12):
        s += 1
    return s


def bracket_plan(R: float, eta: float = 3) -> list[BracketPlan]:
    """Hyperband's brackets for maximum resource ``R`` and reduction factor ``eta``, from
    s = s_max down to 0 (Li et al. 2017, algorithm 1)."""
    _check_R_eta(R, eta)
    s_max = _max_bracket(R, eta)
    exact = isinstance(eta, int) and isinstance(R, int)
    plans = []
    for s in range(s_max, -1, -1):
        if exact:
            n = math.ceil(Fraction((s_max + 1) * eta**s, s + 1))
            sizes = [n // eta**i for i in range(s + 1)]
            resources = [float(Fraction(R * eta**i, eta**s)) for i in range(s + 1)]
        else:
            n = math.ceil((s_max + 1) * eta**s / (s + 1) - 1e-9)
            sizes = [math.floor(n / eta**i + 1e-9) for i in range(s + 1)]
            resources = [R * eta ** (i - s) for i in range(s + 1)]
        plans.append(BracketPlan(s, tuple(zip(sizes, resources))))
    return plans


def _check_R_eta(R: Any, eta: Any) -> None:
    if not isinstance(R, (int, float)) or isinstance(R, bool) or not R >= 1 or math.isinf(R):
        raise SearcherError(f"hyperband: R (the maximum resource) must be a number >= 1, got {R!r}")
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not eta > 1 or math.isinf(eta):
        raise SearcherError(f"hyperband: eta must be a number > 1, got {eta!r}")


@dataclass
class _Entry:
    """One configuration's evaluation at one rung."""

    config: dict[str, Any]
    origin: int  # id of the configuration's rung-0 suggestion
    promoted_from: int | None
    suggestion_id: int | None = None


@dataclass
class _Bracket:
    iteration: int
    plan: BracketPlan
    rung: int = 0
    entries: list[_Entry] = field(default_factory=list)  # of the current rung
    results: dict[int, float | None] = field(default_factory=dict)  # id -> score
    to_propose: int = 0  # rung-0 configurations still to ask from the proposing searcher
    done: bool = False

    @property
    def asked(self) -> bool:
        """Every evaluation of the current rung has been asked."""
        return self.to_propose == 0 and all(e.suggestion_id is not None for e in self.entries)


class HyperbandSearcher(Searcher):
    """Hyperband; see the module docstring.

    Args:
        R: maximum resource per configuration (e.g. epochs).
        eta: reduction factor: a rung keeps 1/eta of its configurations.
        searcher: name of the searcher proposing configurations, or a :class:`Searcher` built
            on the same space.
        iterations: how many times the whole set of brackets runs (None: until the proposing
            searcher is exhausted or ``max_trials`` is reached).
        overlap_brackets: start the next bracket while the current one waits for results, so
            that parallel workers stay busy (brackets are otherwise run one after the other).
        **options: the :class:`Searcher` arguments (all but ``max_trials`` apply to the
            proposing searcher too), and the options of the proposing searcher (e.g.
            ``grid_points`` for "grid").
    """

    name = "hyperband"

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Any],
        *,
        R: float = 81,
        eta: float = 3,
        searcher: str | Searcher = "random",
        iterations: int | None = 1,
        overlap_brackets: bool = True,
        **options: Any,
    ) -> None:
        shared, sub_options = split_options(options)
        super().__init__(space, **shared)
        _check_R_eta(R, eta)
        if iterations is not None and (not isinstance(iterations, int) or iterations < 1):
            raise SearcherError(
                f"hyperband: iterations must be an integer >= 1 or None, got {iterations!r}"
            )
        self.R = R
        self.eta = eta
        self.iterations = iterations
        self.overlap_brackets = bool(overlap_brackets)
        self.plans = bracket_plan(R, eta)
        if isinstance(searcher, Searcher):
            if sub_options:
                raise SearcherError(
                    "hyperband: options " + ", ".join(map(repr, sub_options)) + " are for the "
                    "proposing searcher, which was passed already built"
                )
            if searcher.space != self.space:
                raise SearcherError("hyperband: the proposing searcher works on another space")
            self.proposer = searcher
        else:
            from medtune.registry import create

            self.proposer = create("searcher", searcher, space=self.space,
                                   **self.shared_options, **sub_options)
        self._brackets: list[_Bracket] = []
        self._entries: dict[int, tuple[_Bracket, _Entry]] = {}  # suggestion id -> where
        self._proposed: dict[int, Suggestion] = {}  # rung-0 id -> the proposer's suggestion

    # -- bracket bookkeeping -----------------------------------------------------------------
    def _next_bracket(self) -> _Bracket | None:
        count = len(self._brackets)
        iteration, index = divmod(count, len(self.plans))
        if self.iterations is not None and iteration >= self.iterations:
            return None
        bracket = _Bracket(iteration, self.plans[index])
        bracket.to_propose = bracket.plan.rungs[0][0]
        self._brackets.append(bracket)
        return bracket

    def _tag(self, bracket: _Bracket, entry: _Entry) -> dict[str, Any]:
        return {"iteration": bracket.iteration, "bracket": bracket.plan.s, "rung": bracket.rung,
                "promoted_from": entry.promoted_from, "origin": entry.origin}

    def _propose_in(self, bracket: _Bracket) -> Proposal | None:
        resource = bracket.plan.rungs[bracket.rung][1]
        for entry in bracket.entries:  # promoted configurations waiting to be asked
            if entry.suggestion_id is None:
                entry.suggestion_id = self.asked
                self._entries[entry.suggestion_id] = (bracket, entry)
                return Proposal(dict(entry.config), resource, self._tag(bracket, entry))
        if bracket.to_propose == 0:
            return None
        sub = self.proposer.ask()
        if sub is None:
            if self.proposer.finished:  # nothing left to propose: this rung stays smaller
                bracket.to_propose = 0
                self._close_if_complete(bracket)
                if not bracket.done:
                    return self._propose_in(bracket)
            return None
        bracket.to_propose -= 1
        entry = _Entry(dict(sub.config), origin=self.asked, promoted_from=None,
                       suggestion_id=self.asked)
        bracket.entries.append(entry)
        self._entries[self.asked] = (bracket, entry)
        self._proposed[self.asked] = sub
        return Proposal(dict(sub.config), resource, self._tag(bracket, entry))

    def _propose(self) -> Proposal | None:
        for bracket in self._brackets:
            if bracket.done:
                continue
            proposal = self._propose_in(bracket)
            if proposal is not None:
                return proposal
            if not bracket.done and not self.overlap_brackets:
                return None
        while True:
            if self.proposer.finished:
                return None
            bracket = self._next_bracket()
            if bracket is None:
                return None
            proposal = self._propose_in(bracket)
            if proposal is not None or not bracket.done:
                return proposal

    def _observe(self, suggestion: Suggestion, score: float | None, failed: bool) -> None:
        bracket, _ = self._entries.pop(suggestion.id)
        bracket.results[suggestion.id] = score
        sub = self._proposed.pop(suggestion.id, None)
        if sub is not None:  # a first result: the proposing searcher learns it now
            if failed:
                self.proposer.tell(sub, None, failed=True)
            else:
                self.proposer.tell(sub, self._as_value(score))
        self._close_if_complete(bracket)

    def _close_if_complete(self, bracket: _Bracket) -> None:
        """Once every result of the current rung is in, the best 1/eta go on to the next rung
        (none after the last rung, or when all failed: the bracket is then done)."""
        if not bracket.asked or any(e.suggestion_id not in bracket.results
                                    for e in bracket.entries):
            return
        ranked = sorted(
            (score, position, entry)
            for position, entry in enumerate(bracket.entries)
            if (score := bracket.results[entry.suggestion_id]) is not None  # type: ignore[index]
        )
        rungs = bracket.plan.rungs
        if bracket.rung == bracket.plan.s:
            keep = 0
        elif len(bracket.entries) == rungs[bracket.rung][0]:
            keep = rungs[bracket.rung + 1][0]  # a full rung keeps what the plan says
        else:  # a rung-0 cut short by a finite space: keep 1/eta of it, at least one
            keep = max(1, math.floor(len(bracket.entries) / self.eta + 1e-9))
        promoted = [entry for _, _, entry in ranked[:keep]]
        bracket.results = {}
        if not promoted:
            bracket.done = True
            return
        bracket.rung += 1
        bracket.entries = [
            _Entry(entry.config, origin=entry.origin, promoted_from=entry.suggestion_id)
            for entry in promoted
        ]

    def _counts_for_best(self, suggestion: Suggestion) -> bool:
        return suggestion.resource is not None and suggestion.resource >= self.R * (1 - 1e-12)

    def _planned(self) -> int | None:
        """Every rung of every bracket, ``iterations`` times; None without ``iterations``.
        Fewer when a finite space or failures leave rungs short."""
        if self.iterations is None:
            return None
        return self.iterations * sum(n for plan in self.plans for n, _ in plan.rungs)

    def _exhausted(self) -> bool:
        if any(not b.done and not (b.asked and b.rung == b.plan.s) for b in self._brackets):
            return False
        total = None if self.iterations is None else self.iterations * len(self.plans)
        if total is not None and len(self._brackets) >= total:
            return True
        return self.proposer.finished

