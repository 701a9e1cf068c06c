"""The node's spool and settings without a network: what survives, what is counted, what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lungseg_monai.pacs.config import NodeConfig, load_config, parse_destination
from lungseg_monai.pacs.spool import Spool, spool_name


def _receive(spool: Spool, uid: str, payload: bytes = b"DICM") -> Path:
    return spool.receive(uid, lambda f: f.write(payload), calling_aet="MODALITY")


def test_an_instance_leaves_the_inbox_only_once_its_results_wait_for_every_destination(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = _receive(spool, "1.2.3")
    assert spool.pending() == [path] and path.read_bytes() == b"DICM"
    result = spool.results_dir("1.2.3") / "seg.dcm"
    result.parent.mkdir(parents=True)
    result.write_bytes(b"SEG")
    spool.complete("1.2.3", [result], ["pacs-a", "pacs-b"])
    assert spool.pending() == []
    assert [e.sop for e in spool.waiting("pacs-a")] == ["1.2.3"] == [e.sop for e in spool.waiting("pacs-b")]
    assert spool.status()["waiting_to_send"] == 2

    spool.delivered("pacs-a", spool.waiting("pacs-a")[0])
    assert result.exists(), "pacs-b still needs it"
    spool.delivered("pacs-b", spool.waiting("pacs-b")[0])
    assert not result.exists() and spool.status()["waiting_to_send"] == 0
    status = spool.status()
    assert (status["received"], status["segmented"], status["sent"]) == (1, 1, 2)


def test_counts_and_waiting_work_survive_a_new_spool_object_as_after_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    _receive(spool, "1.2.3")
    _receive(spool, "1.2.4")
    spool.skip("1.2.4", "skipped", "modality CT")
    (tmp_path / "inbox" / ".1.2.5.dcm.abc123.tmp.dcm").write_bytes(b"half")  # a write killed midway
    again = Spool(tmp_path)
    assert [p.stem for p in again.pending()] == ["1.2.3"]
    assert again.status()["received"] == 2 and again.status()["skipped"] == 1
    assert not list((tmp_path / "inbox").glob(".*"))  # the half-written file is gone


def test_a_failed_instance_is_kept_with_its_reason_and_refused_results_are_given_up_after_the_limit(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path)
    _receive(spool, "1.2.3")
    spool.fail("1.2.3", "it cannot be read (truncated)")
    assert (tmp_path / "failed" / "1.2.3.dcm").read_bytes() == b"DICM"
    assert json.loads((tmp_path / "failed" / "1.2.3.json").read_text())["reason"] == "it cannot be read (truncated)"

    _receive(spool, "1.2.4")
    result = spool.results_dir("1.2.4") / "sr.dcm"
    result.parent.mkdir(parents=True)
    result.write_bytes(b"SR")
    spool.complete("1.2.4", [result], ["pacs"])
    assert not spool.refused("pacs", spool.waiting("pacs")[0], "C-STORE status 0xA900", max_refusals=2)
    assert spool.waiting("pacs")[0].refusals == 1
    assert spool.refused("pacs", spool.waiting("pacs")[0], "C-STORE status 0xA900", max_refusals=2)
    assert spool.waiting("pacs") == []
    kept = tmp_path / "undeliverable" / "pacs"
    assert json.loads((kept / "1.2.4.json").read_text())["last_error"] == "C-STORE status 0xA900"
    assert (kept / "1.2.4.sr.dcm").read_bytes() == b"SR"
    assert spool.status()["undeliverable"] == 1 and spool.status()["failed"] == 1


def test_an_invalid_sop_instance_uid_gets_a_safe_file_name() -> None:
    assert spool_name("1.2.840.5") == "1.2.840.5"
    for hostile in ("../../etc/passwd", "1..2", "", "1.2/3"):
        name = spool_name(hostile)
        assert "/" not in name and ".." not in name and name.startswith("x")


def test_destinations_parse_and_bad_ones_are_refused_with_the_expected_form() -> None:
    dicom = parse_destination("ORTHANC@10.0.0.5:4242")
    assert (dicom.kind, dicom.aet, dicom.host, dicom.port) == ("dicom", "ORTHANC", "10.0.0.5", 4242)
    assert parse_destination("http://pacs:8042/dicom-web/").url == "http://pacs:8042/dicom-web"
    assert dicom.key != parse_destination("ORTHANC@10.0.0.6:4242").key
    with pytest.raises(ValueError, match="neither AET@HOST:PORT"):
        parse_destination("pacs:4242")
    with pytest.raises(ValueError, match="not a DICOM AE title"):
        parse_destination("A_TITLE_LONGER_THAN_16@h:104")
    with pytest.raises(ValueError, match="not a DICOMweb URL"):
        NodeConfig(model="m.pt", spool="s", stow_to=["PACS@h:104"])


def test_config_file_with_command_line_overrides_and_unknown_keys_refused(tmp_path: Path) -> None:
    config = tmp_path / "node.json"
    config.write_text(json.dumps({"model": "m.pt", "spool": "s", "aet": "FROMFILE", "port": 104}))
    loaded = load_config(config, {"aet": "FROMCLI", "port": None})
    assert (loaded.aet, loaded.port, loaded.bind) == ("FROMCLI", 104, "127.0.0.1")
    config.write_text(json.dumps({"model": "m.pt", "spool": "s", "colour": "red"}))
    with pytest.raises(ValueError, match=r"unknown node setting\(s\) \['colour'\]"):
        load_config(config, {})
    with pytest.raises(ValueError, match="needs model"):
        load_config(None, {"spool": "s"})


def test_files_still_being_written_are_neither_processed_nor_sent(tmp_path: Path) -> None:
    """Regression (seen in CI): the sender read the processor's half-written outbox entry, moved it
    away as unreadable, and the instance failed. pathlib's glob matches hidden temporary names."""
    spool = Spool(tmp_path)
    _receive(spool, "1.2.3")
    result = spool.results_dir("1.2.3") / "seg.dcm"
    result.parent.mkdir(parents=True)
    result.write_bytes(b"SEG")
    spool.complete("1.2.3", [result], ["pacs"])
    (tmp_path / "inbox" / ".1.2.4.dcm.a1b2c3.tmp.2.4.dcm").write_bytes(b"half")
    (tmp_path / "outbox" / "pacs" / ".1.2.5.json.a1b2c3.tmp.2.5.json").write_text('{"sop": "1.2')
    assert spool.pending() == []
    assert [e.sop for e in spool.waiting("pacs")] == ["1.2.3"]
    assert spool.status()["waiting_to_send"] == 1
    assert (tmp_path / "outbox" / "pacs" / ".1.2.5.json.a1b2c3.tmp.2.5.json").exists()  # left to its writer
    assert not list((tmp_path / "undeliverable").rglob("*"))
