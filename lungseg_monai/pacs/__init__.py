"""The DICOM node ``lungseg node``: receive films from a PACS, segment them, send the results on.

The DICOMweb client it shares with ``lungseg infer`` and ``lungseg label`` lives below both, in
:mod:`lungseg_monai.dicomweb`. Modules: :mod:`~lungseg_monai.pacs.spool` (the node's crash-safe spool and outbox),
:mod:`~lungseg_monai.pacs.scp` (the pynetdicom listener), :mod:`~lungseg_monai.pacs.sender`
(C-STORE and STOW-RS delivery with retries), :mod:`~lungseg_monai.pacs.node` (the node itself).
pynetdicom and dicomweb-client are imported by the modules that use them, not here.
"""
