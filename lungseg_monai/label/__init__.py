"""MONAI Label app: propose lung masks in 3D Slicer/OHIF, collect corrected masks, fine-tune on them.

Start it with ``lungseg label --studies DIR --model models/model.pt`` or, equivalently,
``monailabel start_server --app <APP_DIR> --studies DIR --conf model models/model.pt``; ``DIR`` may
also be a PACS's DICOMweb root (``http://127.0.0.1:8042/dicom-web``).

Modules: ``errors`` (answers with a 4xx or 502 status), ``models`` (which checkpoint is served,
reload on change), ``datastore`` (PNG/JPEG/DICOM/... images in a local folder),
``dicomweb_datastore`` (chest radiographs of a PACS, labels saved to it as DICOM SEG), ``proxy``
(``/proxy/dicom`` forwarding the viewer's Accept header), ``review`` (the browser review page
``/lungseg/review``, its files in ``web/``), ``infer`` and ``train`` (the MONAI Label tasks),
``server`` (the ``MONAILabelApp``), ``cli`` (``lungseg label``).

Needs the ``label`` extra (monailabel). Importing this package does not import monailabel.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["APP_DIR", "MODEL_NAME", "LABEL_NAMES"]

# The MONAI Label app folder (holds main.py) to pass to ``monailabel start_server --app``.
APP_DIR = Path(__file__).resolve().parent / "app"
# Name of the model in /info, /infer/<model> and /train/<model>.
MODEL_NAME = "lung_cxr_segmentation"
# Label name -> value in the masks the app returns (MONAI Label convention: 0 is background).
LABEL_NAMES = {"lung": 1}
