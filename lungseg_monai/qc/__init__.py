"""Quality control: is the input a frontal chest radiograph, and can its mask be trusted?

- :mod:`lungseg_monai.qc.input`: plausibility of the input before the network (image size,
  contrast, aspect ratio; DICOM headers that name another body part or modality).
"""

from __future__ import annotations
