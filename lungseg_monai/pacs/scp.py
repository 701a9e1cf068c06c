"""The node's DICOM listener (pynetdicom): C-ECHO, and C-STORE of images into the spool.

Every storage SOP class is accepted (an instance that is not a frontal chest radiograph is then
skipped with a reason, rather than failing the sender's whole transfer), with the transfer syntaxes
the project's loaders decode. An instance is written to the spool durably before the success status
goes back; a write that fails answers "out of resources" (0xA700), so the sender keeps its copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, BinaryIO

from pydicom.filewriter import write_file_meta_info

from lungseg_monai.pacs.config import NodeConfig
from lungseg_monai.pacs.spool import Spool

__all__ = ["ACCEPTED_TRANSFER_SYNTAXES", "make_application_entity", "make_store_handler"]

logger = logging.getLogger(__name__)

ACCEPTED_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.5",  # RLE lossless
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended (12 bit)
    "1.2.840.10008.1.2.4.57",  # JPEG lossless, non-hierarchical
    "1.2.840.10008.1.2.4.70",  # JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
)
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
_PREAMBLE = b"\x00" * 128 + b"DICM"


def make_store_handler(spool: Spool, on_received: Callable[[], None]) -> Callable[[Any], int]:
    """An ``EVT_C_STORE`` handler: spool the instance as received (no decoding), then answer."""

    def handle_store(event: Any) -> int:
        request = event.request
        calling_aet = str(event.assoc.requestor.ae_title).strip()

        def write(f: BinaryIO) -> None:
            f.write(_PREAMBLE)
            write_file_meta_info(f, event.file_meta, enforce_standard=True)
            f.write(request.DataSet.getvalue())

        try:
            path = spool.receive(str(request.AffectedSOPInstanceUID), write, calling_aet)
        except OSError as e:
            logger.error("cannot spool an instance from %s (%s); answered out of resources", calling_aet, e)
            return STATUS_OUT_OF_RESOURCES
        logger.debug("received instance %s from %s", path.stem, calling_aet)
        on_received()
        return STATUS_SUCCESS

    return handle_store


def make_application_entity(config: NodeConfig) -> Any:
    """A pynetdicom ``AE`` for the node: its AE title (called title checked), allowed callers, limits, contexts."""
    from pynetdicom import AE, AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=config.aet)
    ae.require_called_aet = True
    if config.allowed_aets:
        ae.require_calling_aet = list(config.allowed_aets)
    ae.maximum_associations = config.max_associations
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
    return ae
