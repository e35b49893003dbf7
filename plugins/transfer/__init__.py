"""Transfer layers (Bertrand2019, ch. 3): adapt a network trained on one population to another
without editing it.

- ``geometric``: a predicted similarity transform of the input, inverted at the output
  (:class:`GeometricTransfer`);
- ``intensity``: a predicted per-feature-map scale and bias at one layer, the bottom of the
  U-Net by default (:class:`IntensityTransfer`);
- ``partial``: fine-tune only the first or last ``k`` layers (:class:`PartialFineTuning` and the
  helpers :func:`freeze_all_but`, :func:`trainable_parameters`);
- ``fixed_convolutions``: new (residual, zero-initialised) convolutions after the down- and
  up-sampling layers, the same for every image (:class:`FixedConvolutions`), Bertrand2019's
  counter-example to predicted layers.

Each wraps any backbone (MONAI's UNet by default) and reports ``parameters_added``.
"""

from medtune.plugins.transfer.base import ParameterPredictor, TransferError, TransferLayer
from medtune.plugins.transfer.convolutions import FixedConvolutions, sampling_layers
from medtune.plugins.transfer.geometric import GeometricTransfer
from medtune.plugins.transfer.intensity import IntensityTransfer, module_names, unet_bottom
from medtune.plugins.transfer.partial import (
    PartialFineTuning,
    first_upsampling_layer,
    freeze_all_but,
    parameter_layers,
    trainable_parameters,
)

#: ``{name: factory}`` as registered under the ``transfer_layer`` kind by the built-in plugin.
TRANSFER_LAYERS = {
    "geometric": GeometricTransfer,
    "intensity": IntensityTransfer,
    "partial": PartialFineTuning,
    "fixed_convolutions": FixedConvolutions,
}

__all__ = [
    "TRANSFER_LAYERS",
    "FixedConvolutions",
    "GeometricTransfer",
    "IntensityTransfer",
    "ParameterPredictor",
    "PartialFineTuning",
    "TransferError",
    "TransferLayer",
    "first_upsampling_layer",
    "freeze_all_but",
    "module_names",
    "parameter_layers",
    "sampling_layers",
    "trainable_parameters",
    "unet_bottom",
]
