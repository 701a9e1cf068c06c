"""``lungseg label`` refuses bad arguments before starting a server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lungseg_monai.cli import main


def test_label_refuses_a_missing_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert main(["label", "--studies", str(tmp_path), "--model", str(tmp_path / "missing.pt")]) == 2
    assert f"model '{tmp_path / 'missing.pt'}' does not exist" in caplog.text
    assert not (tmp_path / ".lungseg_label").exists()


def test_label_refuses_a_missing_studies_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "model.pt").write_bytes(b"x")
    with caplog.at_level(logging.ERROR):
        assert main(["label", "--studies", str(tmp_path / "nope"), "--model", str(tmp_path / "model.pt")]) == 2
    assert f"studies folder '{tmp_path / 'nope'}' does not exist" in caplog.text


def test_label_refuses_a_malformed_dicomweb_url(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "model.pt").write_bytes(b"x")
    with caplog.at_level(logging.ERROR):
        assert main(["label", "--studies", "http://", "--model", str(tmp_path / "model.pt")]) == 2
    assert "--studies: DICOMweb URL 'http://' is not http(s)://HOST[:PORT]/PATH" in caplog.text
