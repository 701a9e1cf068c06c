"""The node's spool and settings without a network: what survives, what is counted, what is refused."""

from __future__ import annotations

import json
import os
import time
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
    with pytest.raises(ValueError, match="needs a spool"):
        load_config(None, {"model": "m.pt"})
    assert load_config(None, {"spool": "s"}).model is None  # the shipped default model


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


# -- issue 20: refusals that do not block a destination, claims, crash loops, ledger rotation --------------------


def _queue(spool: Spool, uid: str, destinations: list[str], names: tuple[str, ...] = ("seg.dcm",)) -> None:
    """``uid`` received, claimed and segmented: its results (small synthetic files) queued for ``destinations``."""
    _receive(spool, uid)
    files = []
    for name in names:
        result = spool.results_dir(uid) / name
        result.parent.mkdir(parents=True, exist_ok=True)
        result.write_bytes(name.encode())
        files.append(result)
    spool.complete(uid, files, destinations)


def test_a_refused_entry_waits_for_its_own_next_try_while_later_results_for_the_destination_are_due(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path)
    for uid in ("1.2.1", "1.2.2", "1.2.3"):
        _queue(spool, uid, ["pacs"])
    oldest = spool.waiting("pacs", limit=1)[0]
    assert oldest.sop == "1.2.1"
    before = time.time()
    assert not spool.refused("pacs", oldest, "C-STORE status 0xA900", max_refusals=3, retry_in_s=60)
    assert [e.sop for e in spool.waiting("pacs", limit=2)] == ["1.2.2", "1.2.3"]
    kept = json.loads((tmp_path / "outbox" / "pacs" / "1.2.1.json").read_text())
    assert kept["refusals"] == 1 and kept["last_error"] == "C-STORE status 0xA900"
    assert before + 60 <= kept["next_try"] <= time.time() + 60
    restarted = Spool(tmp_path)  # the next try is in the entry: it survives a restart
    assert [e.sop for e in restarted.waiting("pacs")] == ["1.2.2", "1.2.3"]
    due_later = restarted.waiting("pacs", now=kept["next_try"])
    assert [e.sop for e in due_later] == ["1.2.2", "1.2.3", "1.2.1"]  # once due, behind the others
    assert restarted.status()["waiting_to_send"] == 3  # waiting, though not due


def test_files_a_destination_stored_are_not_sent_again_and_the_refused_one_goes_to_undeliverable_at_the_limit(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path)
    _queue(spool, "1.2.4", ["pacs"], names=("seg.dcm", "sr.dcm"))
    answer = "seg.dcm: peer accepted no presentation context for Segmentation Storage 1.2.840.10008.5.1.4.1.1.66.4"
    entry = spool.waiting("pacs")[0]
    assert not spool.refused("pacs", entry, answer, max_refusals=2, stored=["sr.dcm"])
    entry = spool.waiting("pacs")[0]
    assert (entry.files, entry.refusals, entry.last_error) == (["seg.dcm"], 1, answer)
    assert spool.status()["sent"] == 1
    assert spool.refused("pacs", entry, answer, max_refusals=2)
    kept = tmp_path / "undeliverable" / "pacs"
    assert json.loads((kept / "1.2.4.json").read_text())["last_error"] == answer
    assert sorted(p.name for p in kept.iterdir()) == ["1.2.4.json", "1.2.4.seg.dcm"]
    assert not spool.results_dir("1.2.4").exists(), "nothing needs the results any more"
    assert (spool.status()["sent"], spool.status()["undeliverable"], spool.status()["waiting_to_send"]) == (1, 1, 0)


def test_an_instance_started_3_times_without_ending_fails_and_its_batch_neighbours_are_retried_one_at_a_time(
    tmp_path: Path,
) -> None:
    from lungseg_monai.pacs.spool import MAX_PROCESSING_ATTEMPTS

    spool = Spool(tmp_path)
    for uid in ("1.2.1", "1.2.2", "1.2.3"):
        _receive(spool, uid, uid.encode())
    claimed = tmp_path / "processing"
    assert spool.claim(8) == [claimed / "1.2.1.dcm", claimed / "1.2.2.dcm", claimed / "1.2.3.dcm"]
    assert spool.pending() == [claimed / "1.2.1.dcm", claimed / "1.2.2.dcm", claimed / "1.2.3.dcm"]
    # The node dies on 1.2.2 (a new Spool object is a restart): the batch's instances come back alone.
    spool = Spool(tmp_path)
    assert spool.claim(8) == [claimed / "1.2.1.dcm"]
    spool.complete("1.2.1", [], [])
    assert spool.claim(8) == [claimed / "1.2.2.dcm"]  # attempt 2: the node dies again
    spool = Spool(tmp_path)
    assert spool.claim(8) == [claimed / "1.2.2.dcm"]  # attempt 3: and again
    spool = Spool(tmp_path)
    _receive(spool, "1.2.9")
    assert spool.claim(8) == [claimed / "1.2.3.dcm"], "1.2.2 failed, the innocent 1.2.3 goes on alone"
    reason = json.loads((tmp_path / "failed" / "1.2.2.json").read_text())["reason"]
    assert reason == (
        f"processing was interrupted {MAX_PROCESSING_ATTEMPTS} times (the node crashed or was killed while "
        "processing it)"
    )
    assert (tmp_path / "failed" / "1.2.2.dcm").read_bytes() == b"1.2.2"
    spool.complete("1.2.3", [], [])
    assert spool.claim(8) == [claimed / "1.2.9.dcm"]  # then a batch of the inbox again
    status = spool.status()
    assert (status["segmented"], status["failed"], status["waiting_to_segment"]) == (2, 1, 1)


def test_a_batch_stopped_without_a_verdict_is_not_counted_as_a_crash(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for uid in ("1.2.1", "1.2.2"):
        _receive(spool, uid)
    batch = spool.claim(4)
    spool.unclaim(batch)  # e.g. the disk was full: the node gives the batch back and tries again later
    assert spool.claim(4) == batch, "still one batch: no crash was counted"
    assert json.loads((tmp_path / "processing" / "1.2.1.json").read_text())["attempts"] == 1


def test_a_new_copy_received_while_the_first_is_segmented_waits_in_the_inbox_and_is_segmented_after_it(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path)
    _receive(spool, "1.2.3", b"FIRST")
    [first] = spool.claim(4)
    assert first.read_bytes() == b"FIRST"
    _receive(spool, "1.2.3", b"SECOND")  # a PACS correction keeps the SOP Instance UID
    result = spool.results_dir("1.2.3") / "seg.dcm"
    result.parent.mkdir(parents=True)
    result.write_bytes(b"SEG OF FIRST")
    spool.complete("1.2.3", [result], ["pacs"])
    assert [p.read_bytes() for p in spool.pending()] == [b"SECOND"]
    [second] = spool.claim(4)
    assert second.read_bytes() == b"SECOND"
    # The first copy's results are sent meanwhile: the second copy's segmentation keeps its results folder.
    spool.delivered("pacs", spool.waiting("pacs")[0])
    assert spool.results_dir("1.2.3").is_dir()


def test_failing_a_claimed_copy_after_it_was_dropped_never_moves_the_newer_copy_waiting_in_the_inbox(
    tmp_path: Path,
) -> None:
    """complete() dropped the claimed copy, then something failed and the processor fails the instance: the
    failure names the claimed copy, so the correction waiting in inbox/ is not moved to failed/ unprocessed."""
    spool = Spool(tmp_path)
    _receive(spool, "1.2.3", b"FIRST")
    [first] = spool.claim(4)
    _receive(spool, "1.2.3", b"SECOND")
    spool.complete("1.2.3", [], [], path=first)
    spool.fail("1.2.3", "its results cannot be made (OSError: disk full)", first)
    assert [p.read_bytes() for p in spool.pending()] == [b"SECOND"]
    assert not (spool.failed / "1.2.3.dcm").exists()


def test_an_outbox_entry_replaced_by_a_newer_copys_results_is_not_dropped_by_the_older_ones_delivery(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path)
    _queue(spool, "1.2.3", ["pacs"])
    older = spool.waiting("pacs")[0]
    _queue(spool, "1.2.3", ["pacs"])  # the new copy's results, queued while the older ones were on their way
    spool.delivered("pacs", older)
    assert [e.token for e in spool.waiting("pacs")] != [older.token] and len(spool.waiting("pacs")) == 1
    assert spool.results_dir("1.2.3").is_dir()


def test_the_ledger_rotates_past_its_size_limit_keeping_exact_counts_and_one_rotated_file(tmp_path: Path) -> None:
    limit = 1000  # bytes: a few events per ledger
    spool = Spool(tmp_path, ledger_max_bytes=limit)
    for index in range(60):
        _receive(spool, f"1.2.{index}")
        if index % 3 == 0:
            spool.skip(f"1.2.{index}", "skipped", "modality CT")
    assert sorted(p.name for p in tmp_path.glob("ledger*")) == ["ledger.1.jsonl", "ledger.jsonl"]
    assert (tmp_path / "ledger.jsonl").stat().st_size < limit + 200
    expected = (60, 20, 40)
    status = spool.status()
    assert (status["received"], status["skipped"], status["waiting_to_segment"]) == expected
    for reader in (Spool(tmp_path, ledger_max_bytes=limit), Spool(tmp_path, read_only=True)):
        status = reader.status()
        assert (status["received"], status["skipped"], status["waiting_to_segment"]) == expected
    # A start reads counts.json and the current ledger only: the rotated one may go.
    (tmp_path / "ledger.1.jsonl").unlink()
    assert Spool(tmp_path, ledger_max_bytes=limit).status()["received"] == 60


def test_a_crash_during_rotation_neither_loses_nor_doubles_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for index in range(5):
        _receive(spool, f"1.2.{index}")
    counts = spool.status()
    # What a rotation writes first: the counts so far, with the generation of the ledger they include.
    (tmp_path / "counts.json").write_text(json.dumps({"generation": 0, "counts": {"received": 5}}))
    # Killed before the rename: a reader counts once and changes nothing; a restart finishes the rotation.
    assert Spool(tmp_path, read_only=True).status() == counts
    assert not (tmp_path / "ledger.1.jsonl").exists()
    restarted = Spool(tmp_path)
    assert restarted.status() == counts
    assert (tmp_path / "ledger.1.jsonl").exists()
    _receive(restarted, "1.2.5")
    assert Spool(tmp_path).status()["received"] == 6
    # Killed after the rename, before the new ledger: the same counts.
    (tmp_path / "counts.json").write_text(json.dumps({"generation": 1, "counts": {"received": 6}}))
    (tmp_path / "ledger.jsonl").replace(tmp_path / "ledger.1.jsonl")
    restarted = Spool(tmp_path)
    assert restarted.status()["received"] == 6
    _receive(restarted, "1.2.6")
    assert Spool(tmp_path).status()["received"] == 7


def test_a_ledger_line_cut_short_by_a_crash_does_not_swallow_the_next_event(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    _receive(spool, "1.2.1")
    with open(tmp_path / "ledger.jsonl", "a", encoding="utf-8") as f:
        f.write('{"time": 1, "event": "rece')  # killed mid-line
    restarted = Spool(tmp_path)
    _receive(restarted, "1.2.2")
    assert Spool(tmp_path).status()["received"] == 2


def test_a_second_lock_on_a_spool_is_refused_naming_the_spool_and_the_holders_pid(tmp_path: Path) -> None:
    from lungseg_monai.pacs.spool import SpoolInUseError, SpoolLock

    with SpoolLock(tmp_path):
        with pytest.raises(SpoolInUseError) as refused:
            SpoolLock(tmp_path).acquire()
        assert refused.value.holder_pid == os.getpid()
        assert str(refused.value).startswith(
            f"the spool '{tmp_path}' is in use by another lungseg node (PID {os.getpid()}); "
        )
    SpoolLock(tmp_path).acquire().release()  # released with the first: the next node gets it


def test_reading_the_counts_read_only_changes_nothing_in_a_working_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    _receive(spool, "1.2.3")
    writing = tmp_path / "inbox" / ".1.2.4.dcm.a1b2c3.tmp.dcm"  # the node is writing an instance right now
    writing.write_bytes(b"half")
    assert Spool(tmp_path, read_only=True).status()["received"] == 1
    assert writing.exists()
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        Spool(tmp_path / "absent", read_only=True)
    assert not (tmp_path / "absent").exists()


def test_a_boolean_node_setting_given_as_a_string_is_refused(tmp_path: Path) -> None:
    """"false" in a JSON config is truthy: it would turn the calibration gate off instead of on."""
    config = tmp_path / "node.json"
    config.write_text(json.dumps({"model": "m.pt", "spool": "s", "allow_uncalibrated": "false"}))
    with pytest.raises(ValueError) as info:
        load_config(config, {})
    assert str(info.value) == "node setting 'allow_uncalibrated' must be true or false (a JSON boolean), got 'false'"
