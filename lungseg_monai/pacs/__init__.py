"""Talking to a PACS: DICOMweb (QIDO-RS, WADO-RS, STOW-RS) and the DICOM node ``lungseg node``.

Modules: :mod:`~lungseg_monai.pacs.dicomweb` (search, retrieve and store over DICOMweb with
dicomweb-client), :mod:`~lungseg_monai.pacs.spool` (the node's crash-safe spool and outbox),
:mod:`~lungseg_monai.pacs.scp` (the pynetdicom listener), :mod:`~lungseg_monai.pacs.sender`
(C-STORE and STOW-RS delivery with retries), :mod:`~lungseg_monai.pacs.node` (the node itself).
pynetdicom and dicomweb-client are imported by the modules that use them, not here.
"""
