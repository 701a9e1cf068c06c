"""Fixtures of the PACS tests: a real Orthanc and the small trained model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from orthanc import Orthanc, require_orthanc, running_orthanc
from pacs_tools import PACS_AET


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    require_orthanc()
    with running_orthanc(tmp_path / "orthanc", PACS_AET) as server:
        yield server


@pytest.fixture(scope="session")
def node_model(segmenting_bundle: Path) -> Path:
    """The small trained model (masks not empty; its QC verdicts are mostly reject: SEGs asked for anyway)."""
    return segmenting_bundle / "models" / "model.pt"


@pytest.fixture(scope="session")
def node_segmenter(node_model: Path):  # noqa: ANN201 - LungSegmenter, imported lazily
    from lungseg_monai.inference import LungSegmenter

    return LungSegmenter.from_model(node_model, device="cpu", precision="fp32")


