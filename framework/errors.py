"""Exception types shared across medtune; every message says what was wrong and what to do."""

from __future__ import annotations


class MedtuneError(Exception):
    """Base class of every error medtune raises on purpose."""


class PluginError(MedtuneError):
    """A plugin is missing, ambiguous, broken, or returned something it should not."""


class UnknownPluginError(PluginError, KeyError):
    """No plugin of the requested kind has the requested name."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class KernelError(MedtuneError, ValueError):
    """A kernel op received inputs it cannot process (shape, dtype, device or values)."""


class BackendUnavailableError(MedtuneError, RuntimeError):
    """The requested kernel backend cannot run the op on the given device."""


class LossError(MedtuneError, ValueError):
    """A loss was built with invalid arguments or called with inputs it cannot score.

    A ``ValueError`` too, so code written for MONAI's losses (which raise ``ValueError``) keeps
    catching it.
    """
