"""The built-in tasks (plugin kind ``task``, contract :class:`medtune.tasks.Task`), by name."""

from medtune.plugins.scans.task import ScansTask
from medtune.plugins.tasks.nas import NasTask
from medtune.plugins.tasks.quality import QualityTask
from medtune.plugins.tasks.regions import RegionsTask
from medtune.plugins.tasks.regression import RegressionTask
from medtune.plugins.tasks.segmentation import SegmentationTask
from medtune.plugins.tasks.template import TemplateTask
from medtune.plugins.tasks.transfer import TransferTask

TASKS = {task.name: task for task in (SegmentationTask, TransferTask, TemplateTask, QualityTask, RegionsTask,
                                      NasTask, RegressionTask, ScansTask)}

__all__ = ["TASKS", "NasTask", "QualityTask", "RegionsTask", "RegressionTask", "ScansTask",
           "SegmentationTask", "TemplateTask", "TransferTask"]
