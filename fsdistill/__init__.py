"""fsdistill: few-shot segmentation (DCAMA teacher) distilled into a fast support-free student (DistillFSS)."""

__version__ = "0.1.0"
