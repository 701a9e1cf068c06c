"""A command whose optional extra is missing names the extra and exits 2 (no ImportError traceback)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import SAMPLE_DATA

from lungseg_monai.cli import main
from lungseg_monai.extras import missing_extra


def test_missing_extra_names_the_extra_and_the_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynetdicom", None)  # as if not installed
    message = missing_extra("pacs")
    assert message is not None and "pip install 'lungseg_monai[pacs]'" in message and "pynetdicom" in message
    assert "dicomweb_client" not in message  # installed here
    assert missing_extra("pacs", "dicomweb_client") is None


def test_node_and_dicomweb_without_the_pacs_extra_exit_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynetdicom", None)
    monkeypatch.setitem(sys.modules, "dicomweb_client", None)
    assert main(["node", "--spool", str(tmp_path / "spool")]) == 2
    assert not (tmp_path / "spool").exists()  # stopped before anything was set up
    film = SAMPLE_DATA / "images" / "1052b0fe.png"
    url = "http://127.0.0.1:9/dicom-web"
    assert main(["infer", str(film), "-o", str(tmp_path / "out"), "--stow-to", url, "--formats", "dicomseg"]) == 2
    assert not (tmp_path / "out").exists()
    assert caplog.text.count("lungseg_monai[pacs]") == 2


def test_label_without_monailabel_exits_2_naming_the_label_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "monailabel", None)
    assert main(["label", "--studies", str(tmp_path)]) == 2
    assert "lungseg_monai[label]" in caplog.text
    assert not (tmp_path / ".lungseg_label").exists()
