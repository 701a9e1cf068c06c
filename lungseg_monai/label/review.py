"""The radiograph review page (``/lungseg/review``): see the model's lung mask over a film, correct it, save it.

A browser page served by the MONAI Label server itself (no viewer build, nothing fetched from the
internet): it lists the datastore's images, shows one film, runs the served model on it
(``POST /infer``), draws the mask over the film, lets the annotator paint or erase lung with a
brush, and saves the result (``PUT /datastore/label``: with a PACS, a MANUAL DICOM SEG stored with
STOW-RS). For a PACS it links each film to OHIF's standard viewer (``/ohif/viewer``), which shows
the study as the PACS holds it.

Why a page of its own and not MONAI Label's OHIF mode: the OHIF build in the monailabel 0.8.5
wheel accepts CT/MR only (``isValidMode``), lays out an MPR hanging protocol that finds no viewport
for a single frame, and draws results into 3D labelmap volumes only ("Volume Object is NOT In
Cache" for a radiograph); it has no save action. OHIF 3.6's segmentation overlay also needs
ImagePositionPatient, ImageOrientationPatient and a Frame of Reference, which CR/DX films rarely
carry. The page needs none of those.

Routes (all with MONAI Label's user-role check):

- ``GET /lungseg/review``: the page; ``GET /lungseg/review/{asset}``: its script and style.
- ``GET /lungseg/render?image=ID``: the film as an 8-bit grey PNG on the grid of the masks the
  app returns (decoded by the project's readers: JPEG 2000, JPEG-LS, MONOCHROME1 ... displayed as
  MONOCHROME2, 1st-99th percentile window).
- ``GET /lungseg/label?image=ID``: the image's saved label as a 0/255 PNG, whatever it was saved
  as (a PNG from this page, an NRRD or NIfTI from 3D Slicer, a SEG in the PACS); 404 without one.
  With a PACS the label may be a model's SEG (AUTOMATIC, when no person has labelled the image):
  the headers ``X-Segment-Algorithm-Type``, ``X-Content-Description`` (e.g. "QC reject: ...") and
  ``X-Used-For-Training`` say so, and the page shows it as the model's, never as a person's label.

The page needs no login: with MONAI Label's authentication on (``MONAI_LABEL_AUTH_ENABLE``) its
requests carry no token and are refused (401); use it on a trusted network, as the server itself.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import FileResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from lungseg_monai.io import RadiographReadError, read_mask, read_radiograph
from lungseg_monai.label.errors import BadRequestError, ImageNotFoundError, LabelRequestError
from lungseg_monai.outputs.overlay import to_display_uint8

__all__ = ["WEB_DIR", "ASSETS", "LABEL_INFO_HEADERS", "render_png", "label_png", "review_router", "install_review_page"]

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
# The page's files, by the name in the URL, with their media types; nothing else is served.
ASSETS = {
    "review.js": "text/javascript",
    "review.css": "text/css",
}
_FINAL = "final"  # MONAI Label's tag of a saved label
# Label info sent with ``/lungseg/label`` as response headers: whose mask it is (a PACS's SEG).
LABEL_INFO_HEADERS = {
    "SegmentAlgorithmType": "X-Segment-Algorithm-Type",
    "ContentDescription": "X-Content-Description",
    "UsedForTraining": "X-Used-For-Training",
}
# Fast PNG encoding: the film goes to a browser on the same network, once per image opened.
_RENDER_PNG_COMPRESSION = 1


def render_png(image_path: str | Path) -> bytes:
    """The radiograph at ``image_path`` as an 8-bit grey PNG, rows x columns as the app's masks.

    Raises:
        BadRequestError: the file cannot be read as a radiograph (the reason is given).
    """
    try:
        radiograph = read_radiograph(image_path)
    except RadiographReadError as e:
        raise BadRequestError(f"cannot display '{Path(image_path).name}': {e.reason}") from e
    return _png(to_display_uint8(radiograph.pixels))


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=_RENDER_PNG_COMPRESSION)
    return buffer.getvalue()


def label_png(label_path: str | Path) -> bytes:
    """A saved label (any mask format :func:`~lungseg_monai.io.read_mask` reads) as a 0/255 grey PNG.

    Raises:
        BadRequestError: the label file cannot be read as a mask.
    """
    try:
        mask = read_mask(label_path)
    except RadiographReadError as e:
        raise BadRequestError(f"the saved label '{Path(label_path).name}' cannot be read: {e.reason}") from e
    return _png(mask.pixels.astype(np.uint8) * 255)


def _image_path(image_id: str) -> str:
    from monailabel.interfaces.utils.app import app_instance

    path = app_instance().datastore().get_image_uri(image_id)
    if not path:
        raise ImageNotFoundError(image_id)
    return path


def _render(image_id: str) -> bytes:
    return render_png(_image_path(image_id))


def _label(image_id: str) -> tuple[bytes, dict[str, str]]:
    """The label's PNG, and headers saying whose it is when the datastore knows (a PACS's SEG)."""
    from monailabel.interfaces.utils.app import app_instance

    datastore = app_instance().datastore()
    if image_id not in datastore.list_images():  # 404; get_image_uri would fetch a PACS film just to check
        raise ImageNotFoundError(image_id)
    label_id = datastore.get_label_by_image_id(image_id, _FINAL)
    path = datastore.get_label_uri(label_id, _FINAL) if label_id else ""
    if not path:
        raise LabelRequestError(404, f"image '{image_id}' has no saved label (tag '{_FINAL}')")
    info = datastore.get_label_info(label_id, _FINAL) or {}
    shown = {key: value for key, value in info.items() if key in LABEL_INFO_HEADERS and value not in (None, "")}
    headers = {LABEL_INFO_HEADERS[key]: _header_value(value) for key, value in shown.items()}
    return label_png(path), headers


def _header_value(value: object) -> str:
    """A label info value as an HTTP header value: booleans as ``true``/``false``, text as ASCII."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).encode("ascii", "replace").decode("ascii")  # headers are latin-1; DICOM text may not be


def review_router() -> APIRouter:
    """The ``/lungseg/review`` page, its assets and ``/lungseg/render``."""
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import RBAC

    router = APIRouter(prefix="/lungseg", tags=["Others"])
    role = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))

    @router.get("/review", include_in_schema=False)
    async def page(user=role) -> FileResponse:  # noqa: ANN001 - a Depends
        return FileResponse(WEB_DIR / "review.html", media_type="text/html")

    @router.get("/review/{asset}", include_in_schema=False)
    async def asset(asset: str, user=role) -> FileResponse:  # noqa: ANN001 - a Depends
        if asset not in ASSETS:
            raise LabelRequestError(404, f"no such file of the review page: '{asset}'")
        return FileResponse(WEB_DIR / asset, media_type=ASSETS[asset])

    @router.get("/render")
    async def render(image: str, user=role) -> Response:  # noqa: ANN001 - a Depends
        """The film ``image`` (a datastore image id) as an 8-bit grey PNG, on the masks' grid."""
        content = await run_in_threadpool(_render, image)
        return Response(content=content, media_type="image/png", headers={"Cache-Control": "no-store"})

    @router.get("/label")
    async def label(image: str, user=role) -> Response:  # noqa: ANN001 - a Depends
        """The saved label of ``image`` as a 0/255 grey PNG on the image's grid."""
        content, headers = await run_in_threadpool(_label, image)
        return Response(content=content, media_type="image/png", headers={"Cache-Control": "no-store", **headers})

    return router


def install_review_page(app: FastAPI) -> None:
    """Serve :func:`review_router` on MONAI Label's FastAPI app (once)."""
    from monailabel.config import settings

    if any(getattr(route, "path", "").endswith("/lungseg/review") for route in app.router.routes):
        return
    app.include_router(review_router(), prefix=settings.MONAI_LABEL_API_STR)
    logger.info("radiograph review page: /lungseg/review")
