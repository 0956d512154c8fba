"""TaskRes (Yu et al., CVPR 2023) as a clipadapt method that lives outside clipadapt."""

from .taskres import TaskRes, TaskResConfig

__all__ = ["TaskRes", "TaskResConfig"]
