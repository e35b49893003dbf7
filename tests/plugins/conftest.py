"""Shared fixtures of the loss-plugin tests: a tiny small-lesion batch and a tiny conv net."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn


def small_lesion_batch(
    count: int = 4, size: int = 64, lesions: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images [count, 1, size, size] with a few small bright discs and their masks.

    Disc radii are 2-4 pixels (about 12-50 pixels each, under 2 % of the image), the
    small-target regime of Seo2021.
    """
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(count, 1, size, size)
    for i in range(count):
        for _ in range(lesions):
            cy, cx = (torch.randint(6, size - 6, (2,), generator=generator)).tolist()
            radius = 2 + 2 * torch.rand((), generator=generator).item()
            masks[i, 0][(ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2] = 1.0
    images = masks * 1.5 + 0.5 * torch.randn(count, 1, size, size, generator=generator)
    return images, masks


class TinyNet(nn.Module):
    """Two 3x3 convolutions and a 1x1 head: enough to segment bright discs."""

    def __init__(self, width: int = 8, channels_out: int = 1, batch_norm: bool = False) -> None:
        super().__init__()
        norm = nn.BatchNorm2d(width) if batch_norm else nn.Identity()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            norm,
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, channels_out, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture
def make_lesion_batch() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The :func:`small_lesion_batch` generator."""
    return small_lesion_batch


@pytest.fixture
def make_tiny_net() -> type[TinyNet]:
    """The :class:`TinyNet` class."""
    return TinyNet
