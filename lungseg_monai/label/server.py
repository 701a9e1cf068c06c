"""The MONAI Label app: a ``MONAILabelApp`` serving the lung model on a folder of radiographs or a PACS.

``studies`` is a local folder (:class:`~lungseg_monai.label.datastore.RadiographDatastore`) or a
DICOMweb root URL, ``http(s)://HOST:PORT/dicom-web``
(:class:`~lungseg_monai.label.dicomweb_datastore.DicomwebDatastore`: chest radiographs listed with
QIDO-RS, labels stored as DICOM SEG with STOW-RS). MONAI Label's own DICOMweb datastore is not used:
it converts images to NIfTI, writes SEGs with dcmqi and downloads dcmqi at start-up. With a URL the
server's ``/proxy/dicom/`` forwards the viewer's Accept header (:mod:`lungseg_monai.label.proxy`).

Configuration (``--conf KEY VALUE`` of ``monailabel start_server``; ``lungseg label`` sets them):

- ``model`` (required): the initial ``models/model.pt`` (its ``model.json`` beside it).
- ``workdir``: where fine-tuned models, training runs and stats go (and, for a PACS, the DICOMweb
  cache in ``<workdir>/dicomweb_cache``); default :func:`default_workdir`, outside the studies folder.
- ``device``: torch device for inference and training; default CUDA when available, else CPU.
- ``precision``: ``auto`` (default: bf16 on CPUs with bf16 instructions, fp16 AMP on CUDA, else
  fp32), ``fp32``, ``bf16`` or ``fp16``, for inference and fine-tuning.
- ``train_config``: the bundle's ``configs/train.json``; default the bundle the model sits in, else
  the bundle beside this package's source.
- ``overlay``: ``true`` to store, with each label saved to a PACS, a Secondary Capture of its
  contour over the film (for viewers that cannot overlay a SEG on a radiograph); default ``false``.
- ``train_on_automatic``: ``true`` to fine-tune, with a PACS, also on the model-made (AUTOMATIC)
  lung SEGs that quality control passed, of images no person has labelled; default ``false``: only
  MANUAL and SEMIAUTOMATIC SEGs are training labels, so the model never trains on its own masks
  (see :mod:`lungseg_monai.label.dicomweb_datastore`).

Nothing is downloaded: the model, its preprocessing and the training config are all local.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

import lungseg_monai
from lungseg_monai.inference import read_model_card, resolve_precision
from lungseg_monai.inference.options import DEFAULT_PRECISION
from lungseg_monai.label import MODEL_NAME
from lungseg_monai.label.datastore import RadiographDatastore
from lungseg_monai.label.dicomweb_datastore import DicomwebDatastore
from lungseg_monai.label.errors import ImageNotFoundError
from lungseg_monai.label.infer import LungSegInferTask
from lungseg_monai.label.models import ModelStore, ReloadingSegmenter
from lungseg_monai.label.train import LungSegTrainTask, find_train_config
from lungseg_monai.dicomweb import check_url

__all__ = ["LungSegLabelApp", "DEFAULT_WORKDIR_NAME", "DICOMWEB_CACHE_NAME", "default_workdir", "is_dicomweb_url"]

logger = logging.getLogger(__name__)

DEFAULT_WORKDIR_NAME = ".lungseg_label"  # before 2026-12: the default workdir inside the studies folder
# The DICOMweb datastore's cache, inside the workdir.
DICOMWEB_CACHE_NAME = "dicomweb_cache"


def default_workdir(studies: str) -> Path:
    """Where ``lungseg label`` keeps its state for ``studies`` (a folder or a DICOMweb URL) unless told:
    ``$XDG_STATE_HOME/lungseg/label/<name>-<hash>`` (``~/.local/state`` when unset), one per studies source,
    never inside the user's image folder or the current directory; except that the ``.lungseg_label`` folder
    an earlier version made there (in the studies folder, or the current directory for a PACS) is kept in use.

    Example:
        >>> default_workdir("/data/cxr").parent.name
        'label'
    """
    legacy = (Path.cwd() if is_dicomweb_url(studies) else Path(studies)) / DEFAULT_WORKDIR_NAME
    if legacy.is_dir():  # an earlier version's state (fine-tuned models, runs): keep using it
        logger.warning("using the workdir an earlier lungseg label left in '%s' (pass --workdir to move it)", legacy)
        return legacy
    source = studies if is_dicomweb_url(studies) else str(Path(studies).resolve())
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", source.rstrip("/").rsplit("/", 1)[-1])[:40] or "studies"
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "lungseg" / "label" / f"{name}-{digest}"


def is_dicomweb_url(studies: str) -> bool:
    """True when ``studies`` is a DICOMweb root URL rather than a folder."""
    return str(studies).startswith(("http://", "https://"))


def _flag(conf: dict[str, str], key: str) -> bool:
    """A yes/no configuration value (``--conf KEY true``); absent is no."""
    return str(conf.get(key, "false")).strip().lower() in ("1", "true", "yes")


class LungSegLabelApp(MONAILabelApp):
    """Lung segmentation of chest radiographs for MONAI Label clients (3D Slicer, OHIF, REST).

    Args:
        app_dir: the app folder (holds ``main.py``; MONAI Label keeps its logs there).
        studies: the folder of images (PNG, JPEG, TIFF, BMP, DICOM, 2D NIfTI/NRRD/MetaImage), or
            the DICOMweb root URL of a PACS.
        conf: ``model`` (required), ``workdir``, ``device``, ``precision``, ``train_config``,
            ``overlay``, ``train_on_automatic`` (see the module doc).

    Raises:
        ValueError: ``model`` missing from ``conf``, or a malformed URL.
        FileNotFoundError: the model file does not exist.
        CheckpointError: the model has no model card (``model.json``) to say how to use it.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        if not conf.get("model"):
            raise ValueError("no model given: start the server with --conf model <path to models/model.pt>")
        if is_dicomweb_url(studies):
            studies = check_url(studies)
        workdir = Path(conf.get("workdir") or default_workdir(studies))
        device = conf.get("device") or None
        precision = conf.get("precision") or DEFAULT_PRECISION
        resolve_precision(precision, device)  # an unknown name fails at start, not at the first request
        self.store = ModelStore(conf["model"], workdir)
        read_model_card(self.store.initial)  # fail at start, not at the first request, without a model card
        self.segmenter = ReloadingSegmenter(self.store, device, precision)
        self.train_config = find_train_config(conf.get("train_config"), self.store.initial)
        self.device = device
        self.precision = precision
        self.workdir = workdir
        self.overlay = _flag(conf, "overlay")
        self.train_on_automatic = _flag(conf, "train_on_automatic")
        logger.info(
            "lung model: serving '%s' (initial '%s'); fine-tuned models go to '%s'; training config '%s'",
            self.store.current(),
            self.store.initial,
            self.store.published,
            self.train_config,
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="lungseg_monai",
            description="Lung segmentation of chest radiographs (PNG, JPEG, DICOM): proposals, corrections, retraining",
            version=lungseg_monai.__version__,
        )

    def init_datastore(self) -> Datastore:
        from monailabel.config import settings

        if is_dicomweb_url(self.studies):  # not MONAILabelApp's: it would download dcmqi
            return DicomwebDatastore(
                self.studies,
                self.workdir / DICOMWEB_CACHE_NAME,
                overlay=self.overlay,
                train_on_automatic=self.train_on_automatic,
            )
        return RadiographDatastore(
            self.studies,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {
            MODEL_NAME: LungSegInferTask(
                self.segmenter, description="Lung mask of a chest radiograph (lungseg_monai LungUNet)"
            )
        }

    def init_trainers(self) -> dict[str, TrainTask]:
        return {MODEL_NAME: LungSegTrainTask(self.store, self.train_config, self.device, self.precision)}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MONAI Label's infer, answering 404 (not a server error) for an image id not in the datastore."""
        image = request.get("image")
        datastore = datastore or self.datastore()
        if isinstance(image, str) and image and not Path(image).exists() and not datastore.get_image_uri(image):
            raise ImageNotFoundError(image)
        return super().infer(request, datastore)

    def on_init_complete(self) -> None:
        """Started as a server: serve the review page and, with a PACS, the proxy that forwards the Accept header."""
        super().on_init_complete()
        from monailabel.app import app

        from lungseg_monai.label.review import install_review_page

        install_review_page(app)
        if is_dicomweb_url(self.studies):
            from lungseg_monai.label.proxy import install_dicomweb_proxy

            install_dicomweb_proxy(app)

    def on_save_label(self, image_id: str, label_id: str) -> dict[str, Any]:
        """The answer to ``PUT /datastore/label`` also gives the stored label's info (for a PACS: its SEG's UIDs).

        For a PACS it is what the save itself learnt: a listing that fails right after the SEG was
        stored must not turn the stored label into an error answer.
        """
        super().on_save_label(image_id, label_id)
        datastore = self.datastore()
        if isinstance(datastore, DicomwebDatastore):
            return {"label_info": datastore.saved_label_info(label_id)}
        return {"label_info": datastore.get_label_info(label_id, "final")}
