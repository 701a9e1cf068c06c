"""``lungseg node`` against a real Orthanc: round trip, kill -9, a destination down, bad callers and bad instances."""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pydicom
import pydicom.encaps
import pytest
from orthanc import Orthanc, free_port, running_orthanc
from pacs_tools import NODE_AET, PACS_AET, c_store, chest_instances, real_chest_files, running_node, wait_for

pynetdicom = pytest.importorskip("pynetdicom", reason="the DICOM node needs pynetdicom (pip install .[label])")

SEG_MODALITY, SR_MODALITY = "SEG", "SR"
# Many-instance tests send the real films shrunk to this size, uncompressed (the benchmark sends them whole).
SMALL_FILM = 256


def _register_node(orthanc: Orthanc, port: int) -> None:
    orthanc.add_modality("lungseg", NODE_AET, port)


def _segs_by_source(orthanc: Orthanc) -> dict[str, list[str]]:
    """Orthanc's SEG instances (Orthanc ids) by the SOP Instance UID of the image they segment."""
    found = collections.defaultdict(list)
    for seg in orthanc.instances_by_modality(SEG_MODALITY):
        ds = pydicom.dcmread(_as_file(orthanc.file(seg["ID"])))
        for source in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence:
            found[str(source.ReferencedSOPInstanceUID)].append(seg["ID"])
    return found


def _as_file(data: bytes):  # noqa: ANN202 - a file-like object for dcmread
    import io

    return io.BytesIO(data)


def _sop_uids(paths: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]


def test_round_trip_through_orthanc_one_seg_and_one_sr_per_image_equal_to_lungseg_infer_real_files(
    orthanc: Orthanc, node_segmenter, tmp_path: Path  # noqa: ANN001
) -> None:
    from lungseg_monai.inference.runner import segment_files

    # The three real chest DICOMs; two of them share a SOP Instance UID, so each copy gets its own.
    sources = chest_instances(tmp_path / "in", len(real_chest_files()))
    ids = [orthanc.upload(p) for p in sources]
    with running_node(
        node_segmenter,
        spool=str(tmp_path / "spool"),
        send_to=[orthanc.address],
        allowed_aets=[PACS_AET],
        write_rejected_seg=True,
        batch_size=1,  # the test model has many probabilities at its threshold: compare like with like
    ) as node:
        _register_node(orthanc, node.port)
        orthanc.send("lungseg", ids)  # Orthanc's own C-STORE to the node
        wait_for(lambda: node.status()["sent"] == len(sources), 120, "delivery of every result to Orthanc")
        status = node.status()
    assert status["received"] == status["segmented"] == len(sources)
    assert status["waiting_to_segment"] == status["waiting_to_send"] == status["failed"] == 0

    segs = _segs_by_source(orthanc)
    assert sorted(segs) == sorted(_sop_uids(sources))
    assert all(len(v) == 1 for v in segs.values()), segs
    srs = orthanc.instances_by_modality(SR_MODALITY)
    assert len(srs) == len(sources)

    # Pixel-equal to what `lungseg infer` writes for the same files and model.
    summary = segment_files(
        sources, tmp_path / "infer", node_segmenter, formats="dicomseg", write_rejected=True, batch_size=1
    )
    assert summary.ok and len(summary.segmented) == len(sources)
    for local in sorted((tmp_path / "infer" / "dicomseg").glob("*.dcm")):
        ours = pydicom.dcmread(local)
        source_uid = str(ours.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID)
        theirs = pydicom.dcmread(_as_file(orthanc.file(segs[source_uid][0])))
        assert theirs.SOPInstanceUID == ours.SOPInstanceUID  # same source + model: same UIDs
        assert ours.pixel_array.any()
        np.testing.assert_array_equal(theirs.pixel_array, ours.pixel_array)
        source = pydicom.dcmread(next(p for p in sources if _sop_uids([p])[0] == source_uid), stop_before_pixels=True)
        assert theirs.StudyInstanceUID == source.StudyInstanceUID
        assert theirs.SeriesInstanceUID != source.SeriesInstanceUID
    for sr in srs:
        ds = pydicom.dcmread(_as_file(orthanc.file(sr["ID"])))
        assert ds.StudyInstanceUID in {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in sources}
        referenced = {str(item.ReferencedSOPInstanceUID) for item in ds.CurrentRequestedProcedureEvidenceSequence[0]
                      .ReferencedSeriesSequence[0].ReferencedSOPSequence} if "CurrentRequestedProcedureEvidenceSequence" in ds else set()
        assert referenced & set(segs), "the SR names the image it measures"


def test_the_same_study_sent_twice_gives_one_seg_per_image_real_files(
    orthanc: Orthanc, node_segmenter, tmp_path: Path  # noqa: ANN001
) -> None:
    sources = chest_instances(tmp_path / "in", 3)
    with running_node(
        node_segmenter, spool=str(tmp_path / "spool"), send_to=[orthanc.address], write_rejected_seg=True
    ) as node:
        _register_node(orthanc, node.port)
        assert c_store(node.port, sources) == [0, 0, 0]
        wait_for(lambda: node.status()["sent"] == 3, 120, "first delivery")
        assert c_store(node.port, sources) == [0, 0, 0]
        wait_for(lambda: node.status()["sent"] == 6, 120, "second delivery")
    segs = _segs_by_source(orthanc)
    assert sorted(segs) == sorted(_sop_uids(sources))
    assert [len(v) for v in segs.values()] == [1, 1, 1]
    assert len(orthanc.instances_by_modality(SR_MODALITY)) == 3


def test_batch_size_follows_the_models_input_size_unless_given(tmp_path: Path) -> None:
    from stub_segmenter import STUB_CARD, stub_segmenter

    from lungseg_monai.inference import LungSegmenter
    from lungseg_monai.inference.options import MAX_CPU_BATCH_SIZE
    from lungseg_monai.pacs.config import NodeConfig

    segmenter = stub_segmenter()  # 32 px input: the CPU batch is capped, as in lungseg infer
    with running_node(segmenter, spool=str(tmp_path / "auto"), allow_uncalibrated=True) as node:
        assert node.batch_size == MAX_CPU_BATCH_SIZE
    segmenter = LungSegmenter(segmenter.network, {**STUB_CARD, "image_size": 512}, "cpu", postprocess=False)
    with running_node(segmenter, spool=str(tmp_path / "auto512"), allow_uncalibrated=True) as node:
        assert node.batch_size == 1
    with running_node(segmenter, spool=str(tmp_path / "given"), batch_size=3, allow_uncalibrated=True) as node:
        assert node.batch_size == 3
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        NodeConfig(model="m.pt", spool=str(tmp_path / "s"), batch_size=0)


def test_unknown_calling_and_called_ae_titles_are_rejected_at_association(node_segmenter, tmp_path: Path) -> None:  # noqa: ANN001
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    with running_node(node_segmenter, spool=str(tmp_path / "spool"), allowed_aets=[PACS_AET]) as node:

        def associate(calling: str, called: str) -> pynetdicom.association.Association:
            ae = AE(ae_title=calling)
            ae.add_requested_context(Verification)
            return ae.associate("127.0.0.1", node.port, ae_title=called)

        intruder = associate("INTRUDER", NODE_AET)
        assert intruder.is_rejected
        wrong_called = associate(PACS_AET, "SOMEONE_ELSE")
        assert wrong_called.is_rejected
        friend = associate(PACS_AET, NODE_AET)
        assert friend.is_established
        assert friend.send_c_echo().Status == 0
        friend.release()
        assert node.status()["received"] == 0


def test_non_chest_and_corrupt_instances_get_no_seg_a_logged_reason_and_the_node_goes_on(
    orthanc: Orthanc, node_segmenter, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: ANN001
) -> None:
    from pydicom.data import get_testdata_file

    ct = Path(get_testdata_file("CT_small.dcm"))
    patient_name = str(pydicom.dcmread(ct).PatientName)
    corrupt = tmp_path / "corrupt.dcm"
    ds = pydicom.dcmread(real_chest_files()[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    # Not a JPEG stream at all. (A JPEG stream cut short decodes, to a grey film quality control rejects.)
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 this is not a JPEG stream" * 4])
    ds.save_as(corrupt)
    good = chest_instances(tmp_path / "in", 1)
    caplog.set_level(logging.INFO, logger="lungseg_monai")
    with running_node(
        node_segmenter, spool=str(tmp_path / "spool"), send_to=[orthanc.address], write_rejected_seg=True
    ) as node:
        _register_node(orthanc, node.port)
        assert c_store(node.port, [ct, corrupt, *good]) == [0, 0, 0]
        wait_for(lambda: node.status()["sent"] == 1, 120, "delivery of the good instance")
        wait_for(lambda: node.status()["waiting_to_segment"] == 0, 60, "the end of processing")
        status = node.status()
    assert status["skipped"] == 1 and status["failed"] == 1 and status["segmented"] == 1
    assert sorted(_segs_by_source(orthanc)) == _sop_uids(good)
    ct_uid = str(pydicom.dcmread(ct).SOPInstanceUID)
    skipped = [r for r in caplog.records if ct_uid in r.getMessage() and "skipped" in r.getMessage()]
    assert skipped and "CT" in skipped[0].getMessage()
    failed = [r for r in caplog.records if _sop_uids([corrupt])[0] in r.getMessage() and "failed" in r.getMessage()]
    assert failed, "the corrupt instance's failure is logged with its SOP Instance UID"
    assert (tmp_path / "spool" / "failed" / f"{_sop_uids([corrupt])[0]}.dcm").is_file()  # kept for a person
    assert patient_name not in caplog.text  # no patient data in the log


def test_a_destination_down_during_processing_gets_everything_once_it_is_back(node_segmenter, tmp_path: Path) -> None:  # noqa: ANN001
    port = free_port()
    sources = chest_instances(tmp_path / "in", 4)
    with running_node(
        node_segmenter,
        spool=str(tmp_path / "spool"),
        send_to=[f"{PACS_AET}@127.0.0.1:{port}"],
        write_rejected_seg=True,
    ) as node:
        assert c_store(node.port, sources) == [0] * 4
        wait_for(lambda: node.status()["segmented"] == 4, 120, "segmentation while the PACS is down")
        assert node.status()["sent"] == 0 and node.status()["waiting_to_send"] == 4
        with running_orthanc(tmp_path / "late", PACS_AET, dicom_port=port) as late:
            _register_node(late, node.port)
            wait_for(lambda: node.status()["sent"] == 4, 60, "delivery once the PACS is back")
            segs = _segs_by_source(late)
    assert sorted(segs) == sorted(_sop_uids(sources))
    assert all(len(v) == 1 for v in segs.values())


def _start_node_process(model: Path, spool: Path, port: int, orthanc: Orthanc) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "lungseg_monai.cli", "node",
        "--model", str(model), "--spool", str(spool), "--port", str(port),
        "--send-to", orthanc.address, "--write-rejected-seg", "--device", "cpu", "--precision", "fp32",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(spool.parent / f"node-{port}-{len(list(spool.parent.glob('node-*.log')))}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    return process


def _echo(port: int) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=PACS_AET)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        return False
    assoc.release()
    return True


def _received(spool: Path) -> int:
    ledger = spool / "ledger.jsonl"
    if not ledger.exists():
        return 0
    return sum('"received"' in line for line in ledger.read_text().splitlines())


def test_kill_9_while_receiving_and_processing_then_restart_gives_every_accepted_instance_exactly_one_seg(
    orthanc: Orthanc, node_model: Path, tmp_path: Path
) -> None:
    count = 50
    sources = chest_instances(tmp_path / "in", count, longest_side=SMALL_FILM)
    ids = [orthanc.upload(p) for p in sources]
    spool, port = tmp_path / "spool", free_port()
    _register_node(orthanc, port)
    node = _start_node_process(node_model, spool, port, orthanc)
    try:
        wait_for(lambda: _echo(port), 180, "the node's start")
        accepted: dict[str, bool] = {}

        def send(orthanc_id: str, uid: str) -> None:
            try:
                orthanc.send("lungseg", [orthanc_id], timeout_s=30)
                accepted[uid] = True
            except Exception:  # noqa: BLE001 - the node is down: Orthanc reports a failed store
                accepted[uid] = False

        uids = _sop_uids(sources)
        killer_done = threading.Event()

        def killer() -> None:
            wait_for(lambda: _received(spool) >= count // 3, 120, "a third of the instances received")
            node.send_signal(signal.SIGKILL)
            node.wait(timeout=30)
            killer_done.set()

        thread = threading.Thread(target=killer)
        thread.start()
        for orthanc_id, uid in zip(ids, uids):
            send(orthanc_id, uid)
            if killer_done.is_set():
                break
        thread.join()
        assert node.returncode == -signal.SIGKILL
        assert sum(accepted.values()) >= count // 3
        # The PACS retries what failed, and sends the rest, to the restarted node.
        node = _start_node_process(node_model, spool, port, orthanc)
        wait_for(lambda: _echo(port), 180, "the node's restart")
        for orthanc_id, uid in zip(ids, uids):
            if not accepted.get(uid):
                send(orthanc_id, uid)
        assert all(accepted[uid] for uid in uids), "the restarted node accepts every instance"
        wait_for(lambda: len(_segs_by_source(orthanc)) == count, 240, "one SEG per instance in Orthanc")
        wait_for(
            lambda: json.loads(
                subprocess.run(
                    [sys.executable, "-m", "lungseg_monai.cli", "node", "--status", "--spool", str(spool)],
                    capture_output=True, text=True, check=True,
                ).stdout
            )["waiting_to_send"] == 0,
            120,
            "an empty outbox",
        )  # fmt: skip
    finally:
        if node.poll() is None:
            node.terminate()
            node.wait(timeout=60)
    segs = _segs_by_source(orthanc)
    assert sorted(segs) == sorted(uids)
    assert all(len(v) == 1 for v in segs.values()), {k: len(v) for k, v in segs.items() if len(v) != 1}
    assert len(orthanc.instances_by_modality(SR_MODALITY)) == count
    assert node.returncode == 0  # SIGTERM: a clean stop


def test_load_200_instances_over_4_concurrent_associations_none_lost(
    orthanc: Orthanc, node_segmenter, tmp_path: Path  # noqa: ANN001
) -> None:
    from pacs_tools import c_store_concurrently

    count = 200
    sources = chest_instances(tmp_path / "in", count, longest_side=SMALL_FILM)
    with running_node(
        node_segmenter,
        spool=str(tmp_path / "spool"),
        send_to=[orthanc.address],
        write_rejected_seg=True,
        batch_size=8,
        max_associations=4,
    ) as node:
        _register_node(orthanc, node.port)
        assert c_store_concurrently(node.port, sources, associations=4) == [0] * count
        wait_for(lambda: node.status()["sent"] == count, 600, "delivery of all 200 results")
        status = node.status()
    assert status["received"] == status["segmented"] == count and status["failed"] == 0
    segs = _segs_by_source(orthanc)
    assert sorted(segs) == sorted(_sop_uids(sources))
    assert all(len(v) == 1 for v in segs.values())
