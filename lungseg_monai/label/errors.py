"""Errors of the MONAI Label app that reach the client as a 4xx (or 502) answer with a message.

They are ``fastapi.HTTPException`` (so MONAI Label's endpoints answer with their status code and
detail instead of a 500) and ``ValueError`` (so code outside the server handles them as usual).
"""

from __future__ import annotations

from fastapi import HTTPException

__all__ = ["LabelRequestError", "BadRequestError", "ImageNotFoundError", "PacsError"]

HTTP_BAD_REQUEST = 400
HTTP_NOT_FOUND = 404
HTTP_BAD_GATEWAY = 502


class LabelRequestError(HTTPException, ValueError):
    """A request the app refuses; ``status_code`` and ``detail`` go back to the client."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(status_code=status_code, detail=detail)

    def __str__(self) -> str:
        return self.detail


class BadRequestError(LabelRequestError):
    """The request's content cannot be used (not an image, wrong size, bad parameter): 400."""

    def __init__(self, detail: str) -> None:
        super().__init__(HTTP_BAD_REQUEST, detail)


class ImageNotFoundError(LabelRequestError):
    """The image id is not in the datastore: 404."""

    def __init__(self, image_id: str) -> None:
        super().__init__(
            HTTP_NOT_FOUND,
            f"image '{image_id}' is not in the datastore; GET /datastore/?output=all lists the image ids "
            "(a file's id is its name without the extension)",
        )
        self.image_id = image_id


class PacsError(LabelRequestError):
    """The PACS behind a DICOMweb datastore cannot be reached or refused a request: 502 Bad Gateway.

    ``detail`` says what was asked of which server and why it failed; the app itself keeps serving.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(HTTP_BAD_GATEWAY, detail)
