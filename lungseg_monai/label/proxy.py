"""MONAI Label's DICOMweb proxy (``/proxy/dicom/...``), forwarding what the viewer asked for.

MONAI Label 0.8's proxy sends the PACS a bare GET: without the browser's ``Accept`` header (a
viewer asks for ``multipart/related; type="application/octet-stream"; transfer-syntax=*``, i.e.
the frames as stored) and without the query string. Orthanc then tries to transcode a JPEG 2000
film to the default transfer syntax and answers 500 "Cannot transcode image"; QIDO-RS filters are
lost. :func:`install_dicomweb_proxy` puts routes with the same paths ahead of MONAI Label's, which
forward ``Accept`` (and, for STOW-RS, ``Content-Type``) and the query string, and answer 502 with
the reason when the PACS cannot be reached. The request to the PACS runs in a worker thread, not
on the server's event loop.
"""

from __future__ import annotations

import logging

import requests
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from lungseg_monai.label.errors import HTTP_BAD_GATEWAY
from lungseg_monai.dicomweb import CONNECT_TIMEOUT_S, READ_TIMEOUT_S

__all__ = ["FORWARDED_HEADERS", "dicomweb_proxy_router", "install_dicomweb_proxy"]

logger = logging.getLogger(__name__)

# Request headers passed on to the PACS.
FORWARDED_HEADERS = ("accept", "content-type")
# Answer headers not passed back: they describe the PACS's connection or encoding, not the content
# (requests has already decoded a gzip answer; the length is set again for the body sent).
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length", "te", "trailer", "upgrade"}
)


def _target(op: str, path: str) -> str:
    """The PACS URL of ``/proxy/dicom/[op/]path``, as MONAI Label lays it out (its QIDO/WADO/STOW prefixes)."""
    from monailabel.config import settings

    prefix = {
        "wado": settings.MONAI_LABEL_WADO_PREFIX,
        "qido": settings.MONAI_LABEL_QIDO_PREFIX,
        "stow": settings.MONAI_LABEL_STOW_PREFIX,
    }.get(op, "")
    if op == "qido" and path.endswith("metadata"):  # some OHIF versions ask QIDO for metadata
        prefix = settings.MONAI_LABEL_WADO_PREFIX
    server = settings.MONAI_LABEL_STUDIES.rstrip("/")
    return f"{server}/{prefix.strip('/')}/{path}" if prefix else f"{server}/{path}"


async def _forward(request: Request, op: str, path: str) -> Response:
    from monailabel.config import settings

    url = _target(op, path)
    headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
    auth = None
    if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
        auth = (settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD)
    body = await request.body() if request.method == "POST" else None
    try:
        answer = await run_in_threadpool(
            requests.request,
            request.method,
            url,
            params=list(request.query_params.multi_items()),
            headers=headers,
            data=body,
            auth=auth,
            timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
        )
    except requests.RequestException as e:
        detail = f"the DICOMweb server behind /proxy/dicom cannot be reached for '{url}' ({type(e).__name__}: {e})"
        logger.error(detail)
        return JSONResponse({"detail": detail}, status_code=HTTP_BAD_GATEWAY)
    passed = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
    return Response(content=answer.content, status_code=answer.status_code, headers=passed)


def dicomweb_proxy_router() -> APIRouter:
    """The ``/proxy/dicom/{wado,qido,stow,}/PATH`` routes (GET and POST), with MONAI Label's user role check."""
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import RBAC

    router = APIRouter(prefix="/proxy", tags=["Others"])
    role = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))

    def add(op: str) -> None:
        async def proxy(request: Request, path: str, user=role) -> Response:  # noqa: ANN001 - a Depends
            return await _forward(request, op, path)

        route = f"/dicom/{op}/{{path:path}}" if op else "/dicom/{path:path}"
        router.add_api_route(route, proxy, methods=["GET", "POST"], include_in_schema=False)

    for op in ("wado", "qido", "stow", ""):  # the catch-all last, as in MONAI Label
        add(op)
    return router


def install_dicomweb_proxy(app: FastAPI) -> None:
    """Serve :func:`dicomweb_proxy_router` ahead of MONAI Label's own proxy routes (same paths)."""
    from monailabel.config import settings

    routes = app.router.routes
    if any(getattr(route, "endpoint", None) and route.endpoint.__module__ == __name__ for route in routes):
        return  # installed already
    before = len(routes)
    app.include_router(dicomweb_proxy_router(), prefix=settings.MONAI_LABEL_API_STR)
    added = routes[before:]
    del routes[before:]
    routes[0:0] = added
    logger.info("/proxy/dicom forwards the Accept header and query string to '%s'", settings.MONAI_LABEL_STUDIES)
