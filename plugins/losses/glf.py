"""The generalized loss function (GLF) of Seo2021, with fixed or adaptive coefficients.

With the weighted precision P_aP = TP / (TP + alpha_p FP) and recall R_aN = TP / (TP + alpha_n
FN), Seo2021's eq. 1, ``1 - (1 + beta2) / (1 / P_aP + beta2 / R_aN)``, is the overlap ratio of
:class:`medtune.losses.OverlapLoss` with the (TP, FP, FN) weights (1 + beta2, alpha_p,
beta2 alpha_n): Dice is (1, 1, 1), Effectiveness (1, 1, beta2), and any GLF is a Tversky loss.
Where the paper's text and formulas disagree the code follows the formulas; the algebra and
the disagreements are in docs/losses.md.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from medtune.plugins.losses.adaptive import (
    COEFFICIENTS,
    CoefficientBounds,
    DeterministicRules,
    Trajectory,
    driving_metrics,
)
from medtune.errors import LossError
from medtune.losses import OverlapLoss, non_negative

ADAPTIVE = (None, "deterministic", "exploratory")


class GLFLoss(OverlapLoss):
    """Generalized loss ``1 - (1 + beta2) / (1 / P_aP + beta2 / R_aN)`` (Seo2021, eq. 1).

    Args:
        alpha_p: weight of the false positives in the weighted precision (>= 0; 1 = Dice).
        alpha_n: weight of the false negatives in the weighted recall (>= 0; 1 = Dice).
        beta2: weight of the recall against the precision (>= 0; 1 = Dice).
        adaptive: ``None`` (fixed coefficients), ``"deterministic"`` (every training forward
            updates the coefficients by the rule of
            :mod:`~medtune.plugins.losses.adaptive`; a few scalar operations on the [N, C]
            sums per step), or ``"exploratory"``
            (the coefficients are driven by a
            :class:`~medtune.plugins.losses.exploratory.GLFExploratory`, which performs the
            training step itself; the forward never changes them).
        rules: the deterministic rule (default :class:`DeterministicRules()`).
        freeze_when: which reading of Seo2021's freeze rule the deterministic rule follows,
            ``"below"`` (alpha_p / alpha_n frozen while <FP> < 5 / <FN> < 1, the default) or
            ``"above"`` (frozen while <FP> > 5 / <FN> > 1, the Fig. 2b caption's words); a
            shorthand for ``rules=DeterministicRules(freeze_when=...)`` that a configuration
            file can give (docs/losses.md). ``None``: as ``rules`` says.
        bounds: interval per coefficient for the adaptive strategies, a
            :class:`CoefficientBounds` or a mapping such as ``{"alpha_p": (0.1, 10)}``
            (default [0.05, 20] each); the initial values must lie inside.
        include_background, to_onehot_y, sigmoid, softmax, reduction, smooth_nr, smooth_dr,
        batch, check_finite: as in :class:`~medtune.losses.OverlapLoss`
            (MONAI's meanings; empty targets and NaN handling are documented there).
            ``reduction="none"`` returns [N, C, 1, ...] as the Dice loss does.

    The deterministic update happens only while the module is in training mode
    (``loss.train()``, the default) and gradients are enabled, after the loss of the step has
    been computed with the current coefficients: the step's metrics choose the coefficients of
    the next step. The coefficients are a buffer (``loss.coefficients``, float64 [3]: alpha_p,
    alpha_n, beta2), so they are saved in the state dict; every update is recorded in
    ``loss.trajectory`` (see :class:`~medtune.plugins.losses.adaptive.Trajectory`).

    >>> loss = medtune.create("loss", "glf", sigmoid=True, adaptive="deterministic")
    >>> for images, masks in loader:
    ...     optimizer.zero_grad(); loss(model(images), masks).backward(); optimizer.step()
    >>> loss.trajectory.column("alpha_p")
    """

    coefficients: Tensor

    def __init__(
        self,
        *,
        alpha_p: float = 1.0,
        alpha_n: float = 1.0,
        beta2: float = 1.0,
        adaptive: str | None = None,
        rules: DeterministicRules | None = None,
        freeze_when: str | None = None,
        bounds: CoefficientBounds | Mapping[str, tuple[float, float]] | None = None,
        **options: object,
    ) -> None:
        super().__init__(**options)
        if adaptive not in ADAPTIVE:
            raise LossError(
                "GLFLoss: adaptive must be None, 'deterministic' or 'exploratory', got "
                f"{adaptive!r}"
            )
        if rules is not None and not isinstance(rules, DeterministicRules):
            raise LossError(
                f"GLFLoss: rules must be a DeterministicRules, got {type(rules).__name__}"
            )
        if freeze_when is not None:
            if rules is not None:
                raise LossError(
                    "GLFLoss: give either rules or freeze_when, not both; set freeze_when in "
                    "DeterministicRules(freeze_when=...)"
                )
            rules = DeterministicRules(freeze_when=freeze_when)  # type: ignore[arg-type]
        values = {
            "alpha_p": non_negative("alpha_p", alpha_p, "GLFLoss"),
            "alpha_n": non_negative("alpha_n", alpha_n, "GLFLoss"),
            "beta2": non_negative("beta2", beta2, "GLFLoss"),
        }
        self.adaptive = adaptive
        self.rules = rules if rules is not None else DeterministicRules()
        self.bounds = CoefficientBounds.of(bounds)
        if adaptive is not None:
            self.bounds.check(values)
        self.register_buffer(
            "coefficients",
            torch.tensor([values[name] for name in COEFFICIENTS], dtype=torch.float64),
        )
        self.trajectory = Trajectory()

    @property
    def alpha_p(self) -> float:
        """The current alpha_p."""
        return float(self.coefficients[0])

    @property
    def alpha_n(self) -> float:
        """The current alpha_n."""
        return float(self.coefficients[1])

    @property
    def beta2(self) -> float:
        """The current beta2."""
        return float(self.coefficients[2])

    def weights(self) -> tuple[Tensor, Tensor, Tensor]:
        alpha_p, alpha_n, beta2 = self.coefficients.unbind()
        return 1 + beta2, alpha_p, beta2 * alpha_n

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """The loss with the current coefficients; see :class:`OverlapLoss` for the shapes.

        With ``adaptive="deterministic"`` a training-mode call with gradients enabled then
        updates the coefficients from this batch's (detached) sums and records the step.
        """
        loss, stats = self.unreduced(input, target)
        reduced = self.reduce(loss, input.dim() - 2)
        if self.adaptive == "deterministic" and self.training and torch.is_grad_enabled():
            current = self.coefficients.tolist()
            metrics = driving_metrics(stats, current[0], current[1], self.rules.ratio_floor)
            factors = self.rules.factors(metrics)
            updated = self.bounds.clamp_values([c * f for c, f in zip(current, factors)])
            # a new tensor, not copy_: the step's graph still holds the old coefficients
            self.coefficients = self.coefficients.new_tensor(updated)
            self.trajectory.append(updated, factors, metrics, loss=float(reduced.detach().mean()))
        return reduced

    def extra_repr(self) -> str:
        return (
            f"alpha_p={self.alpha_p:g}, alpha_n={self.alpha_n:g}, beta2={self.beta2:g}, "
            f"adaptive={self.adaptive!r}, "
            + (f"freeze_when={self.rules.freeze_when!r}, " if self.adaptive == "deterministic" else "")
            + super().extra_repr()
        )
