"""What a task's report figures are, and the one place medtune imports matplotlib."""

from __future__ import annotations

from typing import Any

#: one figure of a report: ``(file name inside the report folder, caption)``
Figure = tuple[str, str]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend: reports are written on
    machines without a display. Imported on first use, so that training never pays for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
