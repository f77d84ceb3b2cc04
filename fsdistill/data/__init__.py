"""Support-folder input: discover layouts, read images and masks, validate (``fsdistill check``)."""
