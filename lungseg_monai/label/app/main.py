"""MONAI Label app folder of lungseg_monai: ``monailabel start_server --app <this folder> ...``.

MONAI Label loads ``main.py`` from the app folder and uses the ``MONAILabelApp`` subclass found in
it; the app itself lives in :mod:`lungseg_monai.label.server`.
"""

from __future__ import annotations

from lungseg_monai.label.server import LungSegLabelApp

__all__ = ["LungSegLabelApp"]
