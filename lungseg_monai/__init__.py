"""lungseg_monai: lung segmentation of chest radiographs as a MONAI plugin.

The pipeline, one module per step; each imports only from those before it (docs/architecture.md):
``utils``, ``networks``, ``io`` (reading PNG/JPEG/DICOM/MetaImage/NIfTI), ``transforms`` (MONAI
transforms, the preprocessing), ``data`` (datalists, splits), ``qc`` (quality control),
``pretrained`` (the shipped models), ``dicomweb``, ``extras`` -> ``outputs`` (masks, overlays, NIfTI,
DICOM SEG/SR/SC, measurements) -> ``engine`` (training handlers; the ``train`` extra) -> ``inference``
(a model on new radiographs, post-processing, ``lungseg infer``) -> ``evaluation``, ``modelcards``,
``pacs`` (the DICOM node), ``label`` (MONAI Label app; the ``label`` extra, not imported here).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "bundle_utils",
    "data",
    "engine",
    "evaluation",
    "extras",
    "inference",
    "io",
    "networks",
    "outputs",
    "pretrained",
    "transforms",
]

# Submodules are imported on first use (PEP 562), so `lungseg --help` or `lungseg infer` load
# only what they run: `engine` imports Ignite, `inference` does not.
_SUBMODULES = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES)
