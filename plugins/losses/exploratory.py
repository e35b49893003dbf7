"""The exploratory adaptive strategy of Seo2021 (sec. II.B, Fig. 2a) without copying the model.

Every step the 27 actions (each of alpha_p, alpha_n, beta2 times 0.9, 1 or 1.1) each take one
optimiser step from the current parameters, and the action whose updated network has the
smallest batch-averaged Euclidean distance between prediction and label wins; its step is kept.
Since the GLF depends on the network only through the [N, C] sums, the 27 candidate gradients
are combinations of ``min(27, 2 N C)`` basis gradients, and the 27 updated networks are
evaluated with ``torch.func.functional_call``: no model is ever copied.
``gradients="batch_sums"`` trades exactness for cost when ``batch=False``. The lookahead is
plain SGD; with ``optimizer=`` the chosen gradient goes to the optimiser. The derivation and the
cost: docs/losses.md.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from medtune.kernels import GLFStats, overlap_ratio_loss
from medtune.plugins.losses.adaptive import driving_metrics
from medtune.errors import LossError
from medtune.plugins.losses.glf import GLFLoss

#: Seo2021's three exploratory actions per coefficient: -10 %, keep, +10 %.
THREE_ACTIONS = (0.9, 1.0, 1.1)


@dataclass(frozen=True)
class ExploratoryStep:
    """What one exploratory step chose.

    Attributes:
        action: the factors applied to (alpha_p, alpha_n, beta2).
        coefficients: (alpha_p, alpha_n, beta2) after the step (bounds applied).
        distance: batch-averaged Euclidean distance between prediction and label after the
            chosen step.
        distances: that distance for every action (27 by default), in
            :attr:`GLFExploratory.actions` order.
        loss: the chosen loss at the parameters before the step.
    """

    action: tuple[float, float, float]
    coefficients: tuple[float, float, float]
    distance: float
    distances: Tensor
    loss: float


def euclidean_distance(
    probabilities: Tensor, target: Tensor, skip_background: bool = False
) -> Tensor:
    """Per-sample Euclidean distance [N] between a soft prediction and its label.

    ``probabilities`` is [N, C, *spatial]; ``target`` a mask of that shape or an integer label
    map [N, 1, *spatial] / [N, *spatial] (for C = 1 it holds {0, 1}). A label map is never
    expanded: ||p - g||^2 = sum p^2 - 2 sum p[label] + count. ``skip_background`` leaves
    channel 0 out (C > 1). Works under ``torch.func.vmap``.
    """
    n, c = probabilities.shape[:2]
    p = probabilities.flatten(2)
    if tuple(target.shape) == tuple(probabilities.shape):
        g = target.flatten(2).to(p.dtype)
        if skip_background and c > 1:
            p, g = p[:, 1:], g[:, 1:]
        return (p - g).square().sum((1, 2)).sqrt()
    labels = target.reshape(n, -1).long()
    if c == 1:
        return (p[:, 0] - (labels == 1).to(p.dtype)).square().sum(1).sqrt()
    at_label = p.gather(1, labels[:, None, :]).squeeze(1)
    if skip_background:
        foreground = (labels != 0).to(p.dtype)
        squared = p[:, 1:].square().sum((1, 2)) - 2 * (at_label * foreground).sum(1)
        squared = squared + foreground.sum(1)
    else:
        squared = p.square().sum((1, 2)) - 2 * at_label.sum(1) + labels.shape[1]
    return squared.clamp_min(0).sqrt()


def _activate(output: Tensor, activation: str) -> Tensor:
    if activation == "sigmoid":
        return torch.sigmoid(output)
    if activation == "softmax":
        return torch.softmax(output, dim=1)
    return output


class GLFExploratory:
    """Runs training steps that choose the GLF coefficients by Seo2021's exploratory rule.

    Args:
        loss: a :class:`GLFLoss` built with ``adaptive="exploratory"`` and ``reduction`` "mean"
            or "sum"; its coefficients are updated in place and every step is recorded in
            ``loss.trajectory`` (with the extra entries ``distance`` and ``distance_keep``, the
            distance after the chosen and after the unchanged-coefficients step).
        factors: the per-coefficient actions (default 0.9, 1, 1.1: 27 actions).
        gradients: ``"exact"`` (default) or ``"batch_sums"`` (cheaper approximation when the
            loss has ``batch=False``; see docs/losses.md).
        candidate_forwards: how the 27 updated networks are evaluated: ``"vmap"`` (one
            ``torch.func.vmap`` over ``functional_call``), ``"loop"`` (one ``functional_call``
            after another, same weights, no copies), or ``None`` to pick ``"vmap"`` on GPUs and
            ``"loop"`` on CPUs, where vmap's grouped convolutions measured about 1.3x slower.
        chunk_size: with ``"vmap"``, evaluate this many candidates at a time (``vmap``'s
            ``chunk_size``) to bound memory; ``None`` evaluates all at once.

    Memory: the candidate gradients and the candidate weights, each one copy of every trainable
    parameter per action, plus the activations of the candidate forwards evaluated at once (one
    with ``"loop"``, ``chunk_size`` or all with ``"vmap"``).

    >>> loss = medtune.create("loss", "glf", sigmoid=True, adaptive="exploratory")
    >>> explorer = GLFExploratory(loss)
    >>> for images, masks in loader:
    ...     chosen = explorer.step(model, images, masks, lr=0.05)
    """

    def __init__(
        self,
        loss: GLFLoss,
        *,
        factors: Sequence[float] = THREE_ACTIONS,
        gradients: Literal["exact", "batch_sums"] = "exact",
        candidate_forwards: Literal["vmap", "loop"] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        if not isinstance(loss, GLFLoss):
            raise LossError(
                f"GLFExploratory needs a GLFLoss, got {type(loss).__name__}; build it with "
                "medtune.create('loss', 'glf', adaptive='exploratory', ...)"
            )
        if loss.adaptive != "exploratory":
            raise LossError(
                f"GLFExploratory: the loss was built with adaptive={loss.adaptive!r}; build it "
                "with adaptive='exploratory' so that its forward leaves the coefficients to the "
                "explorer"
            )
        if loss.reduction == "none":
            raise LossError(
                "GLFExploratory: the loss has reduction='none'; a training step needs a scalar "
                "loss, use reduction='mean' or 'sum'"
            )
        factors = tuple(float(f) for f in factors)
        if not factors or not all(0 < f < float("inf") for f in factors):
            raise LossError(f"GLFExploratory: factors must be positive numbers, got {factors!r}")
        if gradients not in ("exact", "batch_sums"):
            raise LossError(
                f"GLFExploratory: gradients must be 'exact' or 'batch_sums', got {gradients!r}"
            )
        if candidate_forwards not in (None, "vmap", "loop"):
            raise LossError(
                "GLFExploratory: candidate_forwards must be 'vmap', 'loop' or None, got "
                f"{candidate_forwards!r}"
            )
        if chunk_size is not None and int(chunk_size) < 1:
            raise LossError(f"GLFExploratory: chunk_size must be >= 1 or None, got {chunk_size!r}")
        self.loss = loss
        self.actions: tuple[tuple[float, float, float], ...] = tuple(
            itertools.product(factors, repeat=3)  # type: ignore[arg-type]
        )
        self.keep = self.actions.index((1.0, 1.0, 1.0)) if 1.0 in factors else None
        self.gradients = gradients
        self.candidate_forwards = candidate_forwards
        self.chunk_size = None if chunk_size is None else int(chunk_size)

    # -- the step ------------------------------------------------------------------------------

    def step(
        self,
        model: nn.Module,
        inputs: Tensor | tuple[Tensor, ...],
        target: Tensor,
        lr: float,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> ExploratoryStep:
        """One training step of ``model`` on the batch (``inputs``, ``target``).

        ``inputs`` is the model's argument (a tuple for several); ``lr`` the step size of the
        candidates' SGD lookahead, which is also the committed step when ``optimizer`` is None.
        With an optimiser its own step is applied to the chosen candidate's gradient (left in
        ``.grad``). Returns the choice; the loss's coefficients and trajectory are updated.
        """
        lr = float(lr)
        if not lr > 0:
            raise LossError(f"GLFExploratory.step: lr must be > 0, got {lr!r}")
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        table, gradients, losses, stats, output = self.candidate_gradients(model, args, target)
        names = list(gradients)
        current = {name: p.detach() for name, p in model.named_parameters() if name in gradients}
        candidates = {name: current[name] - lr * gradients[name] for name in names}
        distances = self.candidate_distances(model, args, target, candidates, output)
        chosen = int(torch.argmin(distances))
        with torch.no_grad():
            parameters = dict(model.named_parameters())
            if optimizer is None:
                for name in names:
                    parameters[name].copy_(candidates[name][chosen])
            else:
                for name in names:
                    parameters[name].grad = gradients[name][chosen].clone()
                optimizer.step()
            previous = self.loss.coefficients.tolist()
            self.loss.coefficients = table[chosen].to(self.loss.coefficients.device, copy=True)
        coefficients = table[chosen].tolist()
        distance_list = distances.tolist()
        metrics = driving_metrics(stats, previous[0], previous[1], self.loss.rules.ratio_floor)
        self.loss.trajectory.append(
            coefficients,
            self.actions[chosen],
            metrics,
            loss=float(losses[chosen]),
            distance=distance_list[chosen],
            distance_keep=distance_list[self.keep] if self.keep is not None else math.nan,
        )
        return ExploratoryStep(
            action=self.actions[chosen],
            coefficients=tuple(coefficients),  # type: ignore[arg-type]
            distance=distance_list[chosen],
            distances=distances.detach(),
            loss=float(losses[chosen]),
        )

    # -- the pieces ----------------------------------------------------------------------------

    def candidate_table(self, device: torch.device | None = None) -> Tensor:
        """[27, 3] candidate (alpha_p, alpha_n, beta2): current times each action, bounded."""
        current = self.loss.coefficients
        if device is not None:
            current = current.to(device)
        factors = current.new_tensor(self.actions)
        return self.loss.bounds.clamp(current[None, :] * factors)

    def candidate_gradients(
        self, model: nn.Module, args: tuple[Tensor, ...], target: Tensor
    ) -> tuple[Tensor, dict[str, Tensor], Tensor, GLFStats, Tensor]:
        """Gradients of the 27 candidate losses from one forward pass.

        Returns the [27, 3] coefficient table, ``{name: [27, *shape]}`` gradients of the
        trainable parameters, the [27] candidate losses, the [N, C'] sums and the (detached)
        network output.
        """
        loss = self.loss
        parameters = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not parameters:
            raise LossError("GLFExploratory: the model has no parameter that requires grad")
        with torch.enable_grad():
            output = model(*args)
            if not isinstance(output, Tensor):
                raise LossError(
                    f"GLFExploratory: the model returned {type(output).__name__}; it must return "
                    "the prediction tensor [N, C, *spatial]"
                )
            leaf = output.detach().requires_grad_(True)
            _, stats = loss.unreduced(leaf, target)
        table = self.candidate_table(output.device)
        sums = torch.stack(tuple(stats), dim=-1).detach().to(torch.float64)

        def reduced(sums: Tensor, coefficients: Tensor) -> Tensor:
            alpha_p, alpha_n, beta2 = coefficients.unbind()
            value = overlap_ratio_loss(
                GLFStats(*sums.unbind(-1)),
                1 + beta2,
                alpha_p,
                beta2 * alpha_n,
                loss.smooth_nr,
                loss.smooth_dr,
                loss.batch,
            )
            return value.mean() if loss.reduction == "mean" else value.sum()

        d_sums, losses = vmap(grad_and_value(reduced), in_dims=(None, 0))(sums, table)
        # The sensitivities to S = TP + FP and to TP (FN = G - TP, G constant): [27, N, C']
        a = d_sums[..., 1]
        b = d_sums[..., 0] - d_sums[..., 1] - d_sums[..., 2]
        directions, mixing = self._directions(a, b)

        def cotangent(direction_a: Tensor, direction_b: Tensor) -> Tensor:
            dtype = stats[0].dtype
            grad_outputs = (
                (direction_a + direction_b).to(dtype),
                direction_a.to(dtype),
                torch.zeros_like(stats[2]),
            )
            return torch.autograd.grad(stats, leaf, grad_outputs, retain_graph=True)[0]

        tensors = [p for _, p in parameters]
        basis: list[list[Tensor]] = [[] for _ in tensors]
        for direction_a, direction_b in directions:
            grads = torch.autograd.grad(
                output, tensors, cotangent(direction_a, direction_b), retain_graph=True,
                allow_unused=True,
            )
            for slot, g, p in zip(basis, grads, tensors):
                slot.append(torch.zeros_like(p) if g is None else g)
        gradients = {}
        for (name, p), slot in zip(parameters, basis):
            stacked = torch.stack(slot)
            if mixing is not None:
                stacked = torch.einsum("jk,k...->j...", mixing.to(stacked.dtype), stacked)
            gradients[name] = stacked
        return table, gradients, losses, stats, output.detach()

    def _directions(
        self, a: Tensor, b: Tensor
    ) -> tuple[list[tuple[Tensor, Tensor]], Tensor | None]:
        """Cotangent directions (a, b) on the sums and the [27, K] matrix mixing their results.

        ``None`` for the matrix means the directions are the 27 candidates themselves.
        """
        count, n, c = a.shape
        pooled = self.loss.batch or self.gradients == "batch_sums"
        if pooled:
            # grad L_j = sum_c mean_n a_j[n,c] grad sum_n S[n,c] + (same for b and TP); exact
            # with batch=True, where a_j[n,c] does not depend on n.
            a_basis, b_basis = a.mean(1), b.mean(1)  # [27, C']
            if 2 * c < count:
                directions = []
                for kind in range(2):
                    for k in range(c):
                        unit = a.new_zeros(n, c)
                        unit[:, k] = 1
                        zero = torch.zeros_like(unit)
                        directions.append((unit, zero) if kind == 0 else (zero, unit))
                return directions, torch.cat([a_basis, b_basis], dim=1)
            expand = (count, n, c)
            a = a_basis[:, None, :].expand(expand)
            b = b_basis[:, None, :].expand(expand)
        elif 2 * n * c < count:
            directions = []
            for kind in range(2):
                for i in range(n):
                    for k in range(c):
                        unit = a.new_zeros(n, c)
                        unit[i, k] = 1
                        zero = torch.zeros_like(unit)
                        directions.append((unit, zero) if kind == 0 else (zero, unit))
            return directions, torch.cat([a.flatten(1), b.flatten(1)], dim=1)
        return [(a[j], b[j]) for j in range(count)], None

    def candidate_distances(
        self,
        model: nn.Module,
        args: tuple[Tensor, ...],
        target: Tensor,
        candidates: dict[str, Tensor],
        output: Tensor,
    ) -> Tensor:
        """[27] batch-averaged Euclidean distances of the candidate networks' predictions.

        ``candidates`` maps trainable parameter names to [27, *shape] values; the other
        parameters and the buffers are shared (buffers as per-candidate copies, so BatchNorm
        statistics updated by the forward are discarded). Dropout draws the same mask for
        every candidate.
        """
        mode = self.candidate_forwards
        if mode is None:
            mode = "vmap" if output.device.type == "cuda" else "loop"
        count = len(self.actions)
        channels = output.shape[1]
        activation = self.loss.activation(channels)
        skip_background = not self.loss.include_background and channels > 1
        target = self.loss.prepare_target(output, target)
        fixed = {n: p.detach() for n, p in model.named_parameters() if n not in candidates}
        buffers = {
            n: b.detach().unsqueeze(0).expand(count, *b.shape).clone()
            for n, b in model.named_buffers()
        }

        def distance(parameters: dict[str, Tensor], buffers: dict[str, Tensor]) -> Tensor:
            prediction = functional_call(model, {**fixed, **parameters, **buffers}, args)
            probabilities = _activate(prediction, activation)
            return euclidean_distance(probabilities, target, skip_background).mean()

        with torch.no_grad():
            if mode == "vmap":
                batched = vmap(
                    distance, in_dims=(0, 0), randomness="same", chunk_size=self.chunk_size
                )
                return batched(candidates, buffers)
            # one candidate after another, each from the same random state (same dropout)
            cuda = output.device if output.device.type == "cuda" else None
            cpu_state = torch.get_rng_state()
            cuda_state = torch.cuda.get_rng_state(cuda) if cuda is not None else None
            distances = []
            for j in range(count):
                torch.set_rng_state(cpu_state)
                if cuda_state is not None:
                    torch.cuda.set_rng_state(cuda_state, cuda)
                distances.append(
                    distance(
                        {n: v[j] for n, v in candidates.items()},
                        {n: b[j] for n, b in buffers.items()},
                    )
                )
            return torch.stack(distances)


@dataclass(frozen=True)
class StepCost:
    """Seconds per step of a plain training step and of an exploratory step, and their ratio."""

    plain_seconds: float
    exploratory_seconds: float

    @property
    def ratio(self) -> float:
        return self.exploratory_seconds / self.plain_seconds


def exploratory_overhead(
    model: nn.Module,
    inputs: Tensor,
    target: Tensor,
    loss_factory: Callable[[], GLFLoss],
    lr: float = 0.05,
    repeats: int = 5,
    gradients: Literal["exact", "batch_sums"] = "exact",
) -> StepCost:
    """Time a plain step (forward, GLF loss, backward, SGD update) against an exploratory step.

    ``loss_factory`` builds the GLF loss (``adaptive="exploratory"``); both kinds of step are
    warmed up once and then timed ``repeats`` times each, interleaved, keeping the best time of
    each, on ``model`` itself, whose parameters therefore change. For measurements and
    reports, not for tests. The numbers in this module's docstring came from::

        import torch
        from torch import nn
        import medtune
        from medtune.plugins.losses import exploratory_overhead

        class SmallUNet(nn.Module):
            def __init__(self, width=8):
                super().__init__()
                def block(i, o):
                    return nn.Sequential(
                        nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())
                self.down = block(1, width)
                self.bottom = nn.Sequential(nn.MaxPool2d(2), block(width, 2 * width))
                self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
                self.head = nn.Sequential(block(2 * width, width), nn.Conv2d(width, 1, 1))

            def forward(self, x):
                skip = self.down(x)
                return self.head(torch.cat([skip, self.up(self.bottom(skip))], 1))

        torch.manual_seed(0)
        images = torch.randn(4, 1, 64, 64)
        masks = (torch.rand(4, 1, 64, 64) > 0.98).float()
        glf = lambda: medtune.create("loss", "glf", sigmoid=True, adaptive="exploratory")
        for gradients in ("exact", "batch_sums"):
            cost = exploratory_overhead(
                SmallUNet(), images, masks, glf, repeats=20, gradients=gradients)
            print(gradients, cost.plain_seconds, cost.exploratory_seconds, cost.ratio)
    """
    plain_loss = loss_factory()
    explorer = GLFExploratory(loss_factory(), gradients=gradients)

    def plain_step() -> None:
        model.zero_grad(set_to_none=True)
        plain_loss(model(inputs), target).backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(lr * p.grad)

    def exploratory_step() -> None:
        explorer.step(model, inputs, target, lr)

    def timed(step: Callable[[], None]) -> float:
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    plain_step()
    exploratory_step()
    # interleaved, best of each: robust to a machine whose load changes during the run
    plain, exploratory = [], []
    for _ in range(max(1, repeats)):
        plain.append(timed(plain_step))
        exploratory.append(timed(exploratory_step))
    return StepCost(min(plain), min(exploratory))
