"""Utilities every layer uses: atomic file writing (:mod:`lungseg_monai.utils.atomic`)."""
