"""The network of a plan: MONAI's DynUNet with the plan's topology (the nnU-Net architecture,
Isensee2021)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monai.networks.nets import DynUNet

    from medtune.plugins.scans.plan import Plan


def build_network(plan: Plan) -> DynUNet:
    """The DynUNet of ``plan``: 3D or 2D as ``plan.patch_size``, one input channel per image
    channel, one output channel per label (background included, raw logits).

    Topology from the plan (``kernels``, ``strides``, ``filters``; the upsampling kernels are the
    strides of the levels below), instance normalisation and leaky ReLU as nnU-Net; no deep
    supervision, so that training and sliding-window inference see one output.
    """
    from monai.networks.nets import DynUNet

    strides = [tuple(s) for s in plan.strides]
    return DynUNet(
        spatial_dims=len(plan.patch_size),
        in_channels=len(plan.channels),
        out_channels=len(plan.labels),
        kernel_size=[tuple(k) for k in plan.kernels],
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=list(plan.filters),
        norm_name=("instance", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=False,
        res_block=False,
    )
