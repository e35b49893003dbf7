"""Adaptive GLF coefficients: the deterministic rule, the exploratory step, and short trainings."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch.func import functional_call

import medtune
from medtune.kernels import GLFStats
from medtune.plugins.losses import (
    CoefficientBounds,
    DeterministicRules,
    GLFExploratory,
    GLFLoss,
    LossError,
    RatioLadder,
    driving_metrics,
    euclidean_distance,
    tversky_projection,
)

BatchMaker = Callable[..., tuple[torch.Tensor, torch.Tensor]]
NetMaker = Callable[..., torch.nn.Module]


def stats_of(tp: list[float], fp: list[float], fn: list[float]) -> GLFStats:
    """[N, 1] confusion sums from per-sample lists."""
    return GLFStats(*(torch.tensor(v, dtype=torch.float64)[:, None] for v in (tp, fp, fn)))


# -- the deterministic rule --------------------------------------------------------------------


def test_ratio_ladder_table() -> None:
    ladder = RatioLadder.symmetric(outer=15, inner=5)
    assert ladder.thresholds == pytest.approx((1 / 15, 1 / 5, 5, 15))
    ratios = [0.01, 1 / 15, 0.1, 0.2, 1.0, 5.0, 5.01, 15.0, 15.1, math.nan]
    expected = [0.5, 0.75, 0.75, 1.0, 1.0, 1.0, 1.25, 1.25, 1.5, 1.0]
    assert [ladder.factor(r) for r in ratios] == expected
    with pytest.raises(LossError, match="thresholds"):
        RatioLadder((1.0, 0.5, 2.0, 3.0))
    with pytest.raises(LossError, match="factors"):
        RatioLadder((0.1, 0.5, 2.0, 3.0), (0.5, 0.75, 1.0, 1.25, -1.0))


def test_deterministic_rule_follows_the_seed() -> None:
    rules = DeterministicRules()
    # early training: FP >> TP, FN ~ TP, precision << recall (seed Fig. 2b: aP halves if
    # <TP/FP> < 1/15; beta2 grows when P << R)
    early = driving_metrics(stats_of([40, 60], [2000, 1500], [40, 50]), 1.0, 1.0)
    assert early["tp_over_fp"] < 1 / 15
    assert rules.factors(early) == (0.5, 1.0, 1.5)
    # late training: TP >> FP and TP >> FN: both alphas increase, beta2 kept
    late = driving_metrics(stats_of([100, 120], [5.5, 6.0], [3, 2]), 1.0, 1.0)
    assert rules.factors(late) == (1.5, 1.5, 1.0)
    # aP frozen while <FP> < 5, aN while <FN> < 1 (the ratios' denominators are tiny)
    tiny = driving_metrics(stats_of([100, 120], [0.2, 0.1], [0.5, 0.2]), 1.0, 1.0)
    assert rules.factors(tiny) == (1.0, 1.0, 1.0)
    # every threshold is configurable
    custom = DeterministicRules(alpha_p=RatioLadder.symmetric(outer=100, inner=10))
    assert custom.factors(early)[0] == 0.75
    loss = GLFLoss(adaptive="deterministic", rules=custom, bounds={"beta2": (0.5, 1.2)})
    logits = torch.full((2, 1, 8, 8), 0.0)
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, :2, :2] = 1  # 4 of 64 pixels: FP >> TP at p = 0.5
    loss(torch.sigmoid(logits), target)
    assert loss.beta2 == 1.2  # x 1.5 clamped to the upper bound
    # the caption read literally freezes above instead
    literal = DeterministicRules(freeze_when="above")
    assert literal.factors(early) == (1.0, 1.0, 1.5)
    assert literal.factors(tiny)[:2] == (1.5, 1.5)


@pytest.mark.parametrize(
    "false_positives,false_negatives,below,above",
    [
        # many false positives and negatives: the caption's words ("above") freeze both
        (6.0, 2.0, (1.5, 1.5), (1.0, 1.0)),
        # few of both: the reading from the stated reason ("below") freezes both
        (4.0, 0.5, (1.0, 1.0), (1.5, 1.5)),
        # exactly on the thresholds neither reading freezes (both comparisons are strict)
        (5.0, 1.0, (1.5, 1.5), (1.5, 1.5)),
        # each count on its own: <FP> decides alpha_p, <FN> decides alpha_n
        (6.0, 0.5, (1.5, 1.0), (1.0, 1.5)),
    ],
)
def test_both_readings_of_the_freeze_rule(
    false_positives: float, false_negatives: float, below: tuple, above: tuple
) -> None:
    # TP >> FP and TP >> FN: every unfrozen alpha grows by 1.5; beta2 (never frozen) kept
    metrics = driving_metrics(
        stats_of([200.0, 200.0], [false_positives] * 2, [false_negatives] * 2), 1.0, 1.0
    )
    assert DeterministicRules(freeze_when="below").factors(metrics) == (*below, 1.0)
    assert DeterministicRules(freeze_when="above").factors(metrics) == (*above, 1.0)
    assert DeterministicRules().factors(metrics) == (*below, 1.0)  # the default reading


@pytest.mark.parametrize("reading", ["below", "above"])
def test_glf_plugin_takes_the_freeze_reading_by_name(
    reading: str, make_lesion_batch: BatchMaker
) -> None:
    loss = medtune.create("loss", "glf", sigmoid=True, adaptive="deterministic",
                          freeze_when=reading)
    assert loss.rules == DeterministicRules(freeze_when=reading)
    x, y = make_lesion_batch(count=2)
    loss(torch.zeros_like(x), y)  # p = 0.5 everywhere: <FP> and <FN> far above 5 and 1
    row = loss.trajectory.rows()[0]
    assert row["false_positives"] > 5 and row["false_negatives"] > 1
    if reading == "above":  # the caption's words: both alphas stay at 1
        assert (loss.alpha_p, loss.alpha_n) == (1.0, 1.0)
    else:  # <TP/FP> < 1/15 halves alpha_p
        assert loss.alpha_p == 0.5
    assert "freeze_when" in repr(loss)
    with pytest.raises(LossError, match="either rules or freeze_when"):
        GLFLoss(adaptive="deterministic", rules=DeterministicRules(), freeze_when="above")
    with pytest.raises(LossError, match="freeze_when must be 'below' or 'above'"):
        GLFLoss(adaptive="deterministic", freeze_when="caption")


def test_undefined_ratios_keep_their_coefficient() -> None:
    # no target anywhere: TP/FN and R/P are undefined (NaN), so aN and beta2 are kept
    metrics = driving_metrics(stats_of([0, 0], [300, 200], [0, 0]), 1.0, 1.0)
    assert math.isnan(metrics["tp_over_fn"]) and math.isnan(metrics["recall_over_precision"])
    assert DeterministicRules().factors(metrics) == (0.5, 1.0, 1.0)
    # an empty image next to a normal one only counts where its ratio is defined
    mixed = driving_metrics(stats_of([0, 50], [300, 10], [0, 50]), 1.0, 1.0)
    assert mixed["tp_over_fn"] == pytest.approx(1.0)
    assert mixed["tp_over_fp"] == pytest.approx(2.5)  # mean of 0/300 and 50/10


def test_bounds() -> None:
    bounds = CoefficientBounds.of({"alpha_p": (0.5, 2.0)})
    clamped = bounds.clamp(torch.tensor([0.1, 30.0, 1.0], dtype=torch.float64))
    assert clamped.tolist() == [0.5, 20.0, 1.0]
    with pytest.raises(LossError, match="0 < low <= high"):
        CoefficientBounds(alpha_p=(0.0, 1.0))
    with pytest.raises(LossError, match="unknown coefficient"):
        CoefficientBounds.of({"gamma": (1, 2)})
    with pytest.raises(LossError, match="outside its adaptive bounds"):
        GLFLoss(alpha_p=50.0, adaptive="deterministic")
    GLFLoss(alpha_p=50.0)  # fixed coefficients need no bounds


def test_deterministic_update_only_while_training(make_lesion_batch: BatchMaker) -> None:
    x, y = make_lesion_batch(count=2)
    logits = torch.zeros_like(x)
    loss = GLFLoss(sigmoid=True, adaptive="deterministic")
    dice = medtune.create("loss", "dice", sigmoid=True)
    first = loss(logits, y)
    # the step's loss uses the coefficients in force before the update (Dice here)
    assert first.item() == pytest.approx(dice(logits, y).item(), abs=1e-7)
    assert loss.alpha_p == 0.5 and len(loss.trajectory) == 1
    with torch.no_grad():
        loss(logits, y)
    loss.eval()
    loss(logits, y)
    assert len(loss.trajectory) == 1 and loss.alpha_p == 0.5
    assert torch.equal(loss.state_dict()["coefficients"], loss.coefficients)
    row = loss.trajectory.rows()[0]
    assert (row["alpha_p_tversky"], row["alpha_n_tversky"]) == pytest.approx(
        tversky_projection(row["alpha_p"], row["alpha_n"], row["beta2"])
    )


def test_tversky_projection_matches_the_algebra(make_lesion_batch: BatchMaker) -> None:
    assert tversky_projection(1.0, 1.0, 1.0) == (1.0, 1.0)  # Dice
    for beta2 in (0.3, 2.0):  # Effectiveness on the line a + b = 2
        a, b = tversky_projection(1.0, 1.0, beta2)
        assert a + b == pytest.approx(2.0)
    x, y = make_lesion_batch(count=2, size=16)
    logits = torch.randn(x.shape, dtype=torch.float64)
    a, b = tversky_projection(0.7, 1.9, 2.5)
    glf = GLFLoss(sigmoid=True, alpha_p=0.7, alpha_n=1.9, beta2=2.5, smooth_nr=0, smooth_dr=0)
    tversky = medtune.create(
        "loss", "tversky", sigmoid=True, alpha=a / 2, beta=b / 2, smooth_nr=0, smooth_dr=0
    )
    assert glf(logits, y).item() == pytest.approx(tversky(logits, y).item(), abs=1e-12)


def test_deterministic_training_moves_coefficients_as_the_seed_predicts(
    make_lesion_batch: BatchMaker, make_tiny_net: NetMaker
) -> None:
    torch.manual_seed(0)
    x, y = make_lesion_batch()
    net = make_tiny_net()
    loss = medtune.create("loss", "glf", sigmoid=True, adaptive="deterministic")
    dice = medtune.create("loss", "dice", sigmoid=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    with torch.no_grad():
        dice_before = dice(net(x), y).item()
    for _ in range(40):
        optimizer.zero_grad()
        loss(net(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        dice_after = dice(net(x), y).item()
    rows = loss.trajectory.rows()
    assert len(rows) == 40
    # false positives dominate early (an untrained net predicts ~0.5 everywhere): aP falls,
    # beta2 rises because the weighted precision is far below the weighted recall
    assert rows[0]["tp_over_fp"] < 1 / 15 and rows[0]["factor_alpha_p"] == 0.5
    assert rows[0]["recall_over_precision"] > 4 and rows[0]["factor_beta2"] == 1.5
    assert rows[4]["alpha_p"] < 0.2 and rows[4]["beta2"] > 1.0
    # the false positives are then trained away and the loss falls
    assert rows[-1]["false_positives"] < 0.1 * rows[0]["false_positives"]
    assert rows[-1]["loss"] < 0.2 * rows[0]["loss"]
    assert dice_after < 0.5 * dice_before
    # the coefficients never leave their bounds
    for row in rows:
        for name in ("alpha_p", "alpha_n", "beta2"):
            assert 0.05 <= row[name] <= 20.0


# -- the exploratory step ----------------------------------------------------------------------


def plain_gradients(
    model: torch.nn.Module, loss: GLFLoss, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "options",
    [
        {"sigmoid": True},
        {"softmax": True, "to_onehot_y": True, "include_background": False, "channels": 3},
        {"sigmoid": True, "batch": True, "reduction": "sum", "batch_norm": True},
    ],
    ids=["binary", "softmax-labels", "batch-bn"],
)
def test_candidate_gradients_are_exact(
    options: dict, make_lesion_batch: BatchMaker, make_tiny_net: NetMaker
) -> None:
    options = dict(options)
    channels = options.pop("channels", 1)
    batch_norm = options.pop("batch_norm", False)
    torch.manual_seed(1)
    x, masks = make_lesion_batch(count=3, size=16, seed=1)
    y = masks.long() if channels == 1 else (masks.long() * torch.randint(1, 3, masks.shape))
    net = make_tiny_net(width=4, channels_out=channels, batch_norm=batch_norm).double()
    x = x.double()
    loss = GLFLoss(adaptive="exploratory", alpha_p=0.8, alpha_n=1.2, beta2=1.5, **options)
    explorer = GLFExploratory(loss)
    table, gradients, losses, _, _ = explorer.candidate_gradients(net, (x,), y)
    assert table.shape == (27, 3) and losses.shape == (27,)
    for j in (0, 13, 26):
        alpha_p, alpha_n, beta2 = table[j].tolist()
        fixed = GLFLoss(alpha_p=alpha_p, alpha_n=alpha_n, beta2=beta2, **options)
        expected = plain_gradients(net, fixed, x, y)
        for name, value in expected.items():
            torch.testing.assert_close(gradients[name][j], value, atol=1e-10, rtol=1e-8)
        assert losses[j].item() == pytest.approx(fixed(net(x), y).item(), abs=1e-10)


def test_batch_sums_approximation_is_exact_for_batch_losses_only(
    make_lesion_batch: BatchMaker, make_tiny_net: NetMaker
) -> None:
    torch.manual_seed(2)
    x, y = make_lesion_batch(count=3, size=16, seed=2)
    net = make_tiny_net(width=4).double()
    x = x.double()
    results = {}
    for batch in (False, True):
        for mode in ("exact", "batch_sums"):
            loss = GLFLoss(sigmoid=True, batch=batch, adaptive="exploratory", alpha_p=0.5)
            explorer = GLFExploratory(loss, gradients=mode)
            _, gradients, _, _, _ = explorer.candidate_gradients(net, (x,), y)
            results[batch, mode] = gradients["body.0.weight"]
    torch.testing.assert_close(results[True, "exact"], results[True, "batch_sums"])
    assert not torch.allclose(results[False, "exact"], results[False, "batch_sums"])


def test_candidate_distances_match_a_naive_evaluation(
    make_lesion_batch: BatchMaker, make_tiny_net: NetMaker
) -> None:
    torch.manual_seed(3)
    x, masks = make_lesion_batch(count=2, size=16, seed=3)
    labels = masks.long() * 2
    net = make_tiny_net(width=4, channels_out=3, batch_norm=True)
    loss = GLFLoss(softmax=True, include_background=False, adaptive="exploratory")
    explorer = GLFExploratory(loss, candidate_forwards="vmap", chunk_size=10)
    table, gradients, _, _, output = explorer.candidate_gradients(net, (x,), labels)
    candidates = {n: p.detach() - 0.5 * gradients[n] for n, p in net.named_parameters()}
    buffers_before = {n: b.clone() for n, b in net.named_buffers()}
    distances = explorer.candidate_distances(net, (x,), labels, candidates, output)
    for n, b in net.named_buffers():  # candidate forwards leave BatchNorm statistics alone
        assert torch.equal(b, buffers_before[n])
    looped = GLFExploratory(loss, candidate_forwards="loop")
    torch.testing.assert_close(
        looped.candidate_distances(net, (x,), labels, candidates, output), distances
    )
    for n, b in net.named_buffers():
        assert torch.equal(b, buffers_before[n])
    one_hot = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).float()
    for j in (0, 26):
        state = {n: v[j] for n, v in candidates.items()}
        state.update({n: b.clone() for n, b in net.named_buffers()})
        probabilities = torch.softmax(functional_call(net, state, (x,)), dim=1)
        expected = (probabilities[:, 1:] - one_hot[:, 1:]).flatten(1).norm(dim=1).mean()
        assert distances[j].item() == pytest.approx(expected.item(), rel=1e-5)


def test_euclidean_distance_never_needs_one_hot() -> None:
    g = torch.Generator().manual_seed(4)
    probabilities = torch.softmax(torch.randn(2, 3, 5, 5, generator=g), dim=1)
    labels = torch.randint(0, 3, (2, 1, 5, 5), generator=g)
    one_hot = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).float()
    for skip in (False, True):
        torch.testing.assert_close(
            euclidean_distance(probabilities, labels, skip),
            euclidean_distance(probabilities, one_hot, skip),
        )
    binary = probabilities[:, :1]
    torch.testing.assert_close(
        euclidean_distance(binary, labels.clamp(max=1)),
        (binary - labels.clamp(max=1)).flatten(1).norm(dim=1),
    )


def test_exploratory_step_commits_the_chosen_candidate(
    make_lesion_batch: BatchMaker, make_tiny_net: NetMaker
) -> None:
    torch.manual_seed(5)
    x, y = make_lesion_batch(count=2, size=16, seed=5)
    nets = [make_tiny_net(width=4) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    losses = [GLFLoss(sigmoid=True, adaptive="exploratory") for _ in range(2)]
    explorer = GLFExploratory(losses[0])
    table, gradients, _, _, _ = explorer.candidate_gradients(nets[0], (x,), y)
    chosen = explorer.step(nets[0], x, y, lr=2.0)
    j = explorer.actions.index(chosen.action)
    assert chosen.distance == pytest.approx(chosen.distances.min().item())
    assert losses[0].coefficients.tolist() == pytest.approx(table[j].tolist())
    assert chosen.coefficients == pytest.approx(tuple(table[j].tolist()))
    # the same step through an SGD optimiser with the same learning rate
    optimizer = torch.optim.SGD(nets[1].parameters(), lr=2.0)
    again = GLFExploratory(losses[1]).step(nets[1], x, y, lr=2.0, optimizer=optimizer)
    assert again.action == chosen.action
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b)
        assert torch.equal(b.grad, gradients[name][j])


def test_exploratory_arguments_are_checked(
    make_lesion_batch: BatchMaker, make_tiny_net: NetMaker
) -> None:
    with pytest.raises(LossError, match="adaptive='exploratory'"):
        GLFExploratory(GLFLoss(adaptive="deterministic"))
    with pytest.raises(LossError, match="reduction='none'"):
        GLFExploratory(GLFLoss(adaptive="exploratory", reduction="none"))
    with pytest.raises(LossError, match="GLFLoss"):
        GLFExploratory(medtune.create("loss", "dice"))  # type: ignore[arg-type]
    with pytest.raises(LossError, match="candidate_forwards"):
        GLFExploratory(
            GLFLoss(adaptive="exploratory"), candidate_forwards="threads"  # type: ignore[arg-type]
        )
    explorer = GLFExploratory(GLFLoss(adaptive="exploratory", sigmoid=True))
    x, y = make_lesion_batch(count=1, size=16)
    with pytest.raises(LossError, match="lr must be > 0"):
        explorer.step(make_tiny_net(width=2), x, y, lr=0.0)


def test_exploratory_training_moves_coefficients_as_the_seed_predicts(
    make_lesion_batch: BatchMaker, make_tiny_net: NetMaker
) -> None:
    torch.manual_seed(0)
    x, y = make_lesion_batch()
    net = make_tiny_net()
    loss = medtune.create("loss", "glf", sigmoid=True, adaptive="exploratory")
    explorer = GLFExploratory(loss)
    steps = [explorer.step(net, x, y, lr=5.0) for _ in range(30)]
    rows = loss.trajectory.rows()
    assert len(rows) == 30
    # early, while false positives dominate, the greedy choice lowers aP (seed Fig. 6a)
    assert rows[0]["tp_over_fp"] < 1 / 15
    assert rows[4]["alpha_p"] < 0.8
    assert sum(step.action[0] < 1 for step in steps[:5]) >= 3
    # every chosen step is at least as good as keeping the coefficients, and training works
    for row in rows:
        assert row["distance"] <= row["distance_keep"] + 1e-6
    assert rows[-1]["distance"] < 0.2 * rows[0]["distance"]
    assert rows[-1]["loss"] < 0.2 * rows[0]["loss"]
    assert rows[-1]["false_positives"] < 0.05 * rows[0]["false_positives"]
