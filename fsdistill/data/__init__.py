"""Support-folder input: discover layouts, read images and masks, validate (``fsdistill check``)."""

from fsdistill.data.check import CheckReport, check_index, check_support
from fsdistill.data.discover import Sample, SupportIndex, discover, read_class_names
from fsdistill.data.images import IMAGE_SUFFIXES, image_size, read_image
from fsdistill.data.masks import IGNORE_INDEX, default_palette, read_index_mask, write_index_png

__all__ = [
    "CheckReport",
    "IGNORE_INDEX",
    "IMAGE_SUFFIXES",
    "Sample",
    "SupportIndex",
    "check_index",
    "check_support",
    "default_palette",
    "discover",
    "image_size",
    "read_class_names",
    "read_image",
    "read_index_mask",
    "write_index_png",
]
