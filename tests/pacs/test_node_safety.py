"""Issue 20's safety gates of ``lungseg node``: refusals that do not block a destination, crash loops, a
second copy of an instance, a second node on one spool, a model without QC calibration.

The peers are real: Orthanc where it can play the part, otherwise a pynetdicom SCP that lacks
Segmentation Storage (Orthanc 1.10 accepts every storage class) or is busy, and a small STOW-RS
server that refuses SEGs as a PACS without SEG support answers (Orthanc accepts every instance).
The model is the one-weight stub (no training): its QC is unavailable, so the nodes run with
``allow_uncalibrated``.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from orthanc import Orthanc, free_port
from pacs_tools import NODE_AET, c_store, chest_instances, running_node, shrunk, wait_for
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from stub_segmenter import STUB_CARD, stub_segmenter

pytest.importorskip("pynetdicom", reason="the DICOM node needs pynetdicom (pip install .[label])")

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
NO_SEG_CONTEXT = f"peer accepted no presentation context for Segmentation Storage {SEG_CLASS}"
PEER_AET = "PEER"
# Many tests send the real films shrunk to this size, uncompressed.
SMALL_FILM = 256
# Fast retries, and few refusals before a result is set aside.
FAST = {"retry_first_s": 0.2, "retry_max_s": 1.0, "max_refusals": 2, "allow_uncalibrated": True}
TESTS_DIR = Path(__file__).resolve().parents[1]


@dataclass
class Peer:
    """A pynetdicom storage SCP on 127.0.0.1 and the datasets it stored, in arrival order."""

    aet: str
    port: int
    received: list[Dataset] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.port}"

    def modalities(self) -> list[str]:
        return [str(ds.Modality) for ds in self.received]


@contextlib.contextmanager
def dicom_peer(without: tuple[str, ...] = (), maximum_associations: int = 8) -> Iterator[Peer]:
    """A storage SCP accepting every storage SOP class but ``without`` (e.g. a PACS without SEG storage)."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification

    peer = Peer(PEER_AET, 0)

    def on_store(event) -> int:  # noqa: ANN001 - pynetdicom's Event
        ds = event.dataset
        ds.file_meta = event.file_meta
        peer.received.append(ds)
        return 0x0000

    ae = AE(ae_title=PEER_AET)
    ae.maximum_associations = maximum_associations
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax not in without:
            ae.add_supported_context(context.abstract_syntax)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    peer.port = int(server.server_address[1])
    try:
        yield peer
    finally:
        server.shutdown()


def _outbox_entries(spool: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((spool / "outbox").glob("*/*.json"))]


def _undeliverable(spool: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (spool / "undeliverable").glob("*/*.json")}


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# -- item 4: one refusal must not block a destination ------------------------------------------------------------


def test_a_peer_without_seg_storage_gets_every_sr_and_the_segs_are_set_aside_with_its_answer_real_films(
    tmp_path: Path,
) -> None:
    sources = chest_instances(tmp_path / "in", 3, longest_side=SMALL_FILM)
    spool = tmp_path / "spool"
    with dicom_peer(without=(SEG_CLASS,)) as peer, running_node(
        stub_segmenter(), spool=str(spool), send_to=[peer.address], **FAST
    ) as node:
        assert c_store(node.port, sources[:1]) == [0]
        wait_for(lambda: node.status()["sent"] == 1, 60, "the first SR delivered, the SEG beside it refused")
        assert c_store(node.port, sources[1:]) == [0, 0]  # later results for the same destination
        wait_for(lambda: node.status()["undeliverable"] == 3, 60, "every SEG set aside after 2 refusals")
        wait_for(lambda: node.status()["waiting_to_send"] == 0, 30, "an empty outbox")
        status = node.status()
    assert peer.modalities() == ["SR", "SR", "SR"]
    set_aside = _undeliverable(spool)
    assert sorted(set_aside) == sorted(_sop_uid(p) for p in sources)
    for sop, entry in set_aside.items():
        assert entry["files"] == ["seg.dcm"] and entry["refusals"] == 2
        assert entry["last_error"] == f"seg.dcm: {NO_SEG_CONTEXT}"
        kept = next((spool / "undeliverable").glob(f"*/{sop}.seg.dcm"))
        assert str(pydicom.dcmread(kept).SOPClassUID) == SEG_CLASS
    assert (status["sent"], status["undeliverable"], status["segmented"]) == (3, 3, 3)
    assert not any((spool / "results").iterdir()), "results nobody needs any more are removed"


def test_a_permanent_association_rejection_by_orthanc_is_a_refusal_while_another_destination_gets_everything(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    """Orthanc rejects a calling AE title it does not know permanently (the node is not registered)."""
    sources = chest_instances(tmp_path / "in", 2, longest_side=SMALL_FILM)
    spool = tmp_path / "spool"
    with dicom_peer() as peer, running_node(
        stub_segmenter(), spool=str(spool), send_to=[orthanc.address, peer.address], **FAST
    ) as node:
        assert c_store(node.port, sources) == [0, 0]
        wait_for(lambda: node.status()["undeliverable"] == 2, 60, "both results set aside for Orthanc")
        wait_for(lambda: node.status()["sent"] == 2, 60, "both results delivered to the other peer")
        wait_for(lambda: node.status()["waiting_to_send"] == 0, 30, "an empty outbox")
    assert sorted(peer.modalities()) == ["SEG", "SEG", "SR", "SR"]
    answer = f"{orthanc.address} rejected the association permanently (Service User: Calling AE title not recognised)"
    set_aside = _undeliverable(spool)
    assert sorted(set_aside) == sorted(_sop_uid(p) for p in sources)
    for entry in set_aside.values():
        assert entry["refusals"] == 2
        assert entry["last_error"] == f"seg.dcm: {answer}; sr.dcm: {answer}"
    assert orthanc.instances_by_modality("SEG") == []


def test_a_transient_association_rejection_stays_unreachable_and_is_retried_past_the_refusal_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    sources = chest_instances(tmp_path / "in", 1, longest_side=SMALL_FILM)
    spool = tmp_path / "spool"
    caplog.set_level(logging.WARNING, logger="lungseg_monai.pacs.sender")
    with dicom_peer(maximum_associations=1) as peer:
        ae = AE(ae_title="BUSY")
        ae.add_requested_context(Verification)
        busy = ae.associate("127.0.0.1", peer.port, ae_title=PEER_AET)  # the peer's one association
        assert busy.is_established
        with running_node(stub_segmenter(), spool=str(spool), send_to=[peer.address], **FAST) as node:
            assert c_store(node.port, sources) == [0]
            def tries() -> int:
                return sum("rejected the association for now" in r.getMessage() for r in caplog.records)

            wait_for(lambda: tries() >= 4, 60, "four tries of a busy peer")
            [entry] = _outbox_entries(spool)
            assert entry["refusals"] == 0 and node.status()["undeliverable"] == 0
            busy.release()
            wait_for(lambda: node.status()["sent"] == 1, 60, "delivery once the peer is free")
    assert sorted(peer.modalities()) == ["SEG", "SR"]


class _StowServer(http.server.ThreadingHTTPServer):
    """STOW-RS at ``/dicom-web/studies`` of a PACS without SEG support: it stores every other
    instance and refuses SEGs (Failed SOP Sequence, "SOP class not supported"); HTTP 200 when all
    are stored, 202 when some are, 409 when none. ``answer_status`` set: that bare HTTP status.
    ``max_parts`` set: a request with more instances is answered 413 (a proxy's body size limit)."""

    answer_status: int | None = None
    max_parts: int | None = None
    stored: list[str]


class _StowHandler(http.server.BaseHTTPRequestHandler):
    server: _StowServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.answer_status is not None:
            self.send_response(self.server.answer_status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        boundary = self.headers["Content-Type"].split("boundary=")[1].strip('"').encode()
        parts = body.split(b"--" + boundary)[1:-1]
        if self.server.max_parts is not None and len(parts) > self.server.max_parts:
            self.send_response(413)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        stored, failed = [], []
        for part in parts:
            ds = pydicom.dcmread(io.BytesIO(part.split(b"\r\n\r\n", 1)[1][: -len(b"\r\n")]))
            item = {
                "00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                "00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
            }
            if str(ds.SOPClassUID) == SEG_CLASS:
                failed.append({**item, "00081197": {"vr": "US", "Value": [0x0122]}})
            else:
                stored.append(item)
                self.server.stored.append(str(ds.Modality))
        answer = {}
        if stored:
            answer["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            answer["00081198"] = {"vr": "SQ", "Value": failed}
        data = json.dumps(answer).encode()
        self.send_response(409 if not stored else 202 if failed else 200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextlib.contextmanager
def stow_server() -> Iterator[_StowServer]:
    server = _StowServer(("127.0.0.1", 0), _StowHandler)
    server.stored = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _url(server: _StowServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/dicom-web"


def test_a_stow_server_refusing_segs_gets_every_sr_and_the_segs_are_set_aside_with_its_answer_real_films(
    tmp_path: Path,
) -> None:
    sources = chest_instances(tmp_path / "in", 2, longest_side=SMALL_FILM)
    spool = tmp_path / "spool"
    with stow_server() as server, running_node(
        stub_segmenter(), spool=str(spool), stow_to=[_url(server)], **FAST
    ) as node:
        assert c_store(node.port, sources) == [0, 0]
        wait_for(lambda: node.status()["undeliverable"] == 2, 60, "both SEGs set aside")
        wait_for(lambda: node.status()["waiting_to_send"] == 0, 30, "an empty outbox")
    assert server.stored == ["SR", "SR"]
    for entry in _undeliverable(spool).values():
        assert entry["files"] == ["seg.dcm"]
        assert entry["last_error"] == "seg.dcm: refused by the server: SOP class not supported (0x0122)"


def _synthetic_result(folder: Path, modality: str, sop_class: str) -> Path:
    """A small synthetic result object (header only): enough for a STOW-RS server to accept or refuse."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), modality
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{modality.lower()}.dcm"
    ds.is_little_endian, ds.is_implicit_VR = True, False  # still honoured (deprecated) by pydicom 3
    ds.save_as(path, write_like_original=False)
    return path


@pytest.mark.parametrize(
    ("answer_status", "refused"),
    [(None, True), (400, True), (422, True), (500, False), (503, False), (404, False), (429, False)],
)
def test_stow_answers_refusing_files_are_refusals_and_server_errors_are_unreachable_synthetic_files(
    tmp_path: Path, answer_status: int | None, refused: bool
) -> None:
    from lungseg_monai.pacs.config import Destination
    from lungseg_monai.pacs.sender import DeliveryError, send_stow

    seg = _synthetic_result(tmp_path, "SEG", SEG_CLASS)
    with stow_server() as server:
        server.answer_status = answer_status
        with pytest.raises(DeliveryError) as error:
            send_stow(Destination("stow", url=_url(server)), [seg])
    assert error.value.unreachable is not refused
    assert (seg in error.value.refused) is refused


def test_stow_refusing_one_file_of_a_request_stores_the_others_and_no_server_is_unreachable_synthetic_files(
    tmp_path: Path,
) -> None:
    from lungseg_monai.pacs.config import Destination
    from lungseg_monai.pacs.sender import DeliveryError, send_stow

    seg = _synthetic_result(tmp_path, "SEG", SEG_CLASS)
    sr = _synthetic_result(tmp_path, "SR", "1.2.840.10008.5.1.4.1.1.88.34")
    with stow_server() as server:
        with pytest.raises(DeliveryError) as error:
            send_stow(Destination("stow", url=_url(server)), [seg, sr])
        assert server.stored == ["SR"]
    assert not error.value.unreachable
    assert error.value.refused == {seg: "refused by the server: SOP class not supported (0x0122)"}
    with pytest.raises(DeliveryError) as error:
        send_stow(Destination("stow", url=f"http://127.0.0.1:{free_port()}/dicom-web"), [seg])
    assert error.value.unreachable and not error.value.refused


# -- item 7: crash loops, a second copy of an instance, a second node ---------------------------------------------

_CRASHING_NODE = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from stub_segmenter import stub_segmenter
from lungseg_monai.pacs.config import NodeConfig
from lungseg_monai.pacs.node import DicomNode

segmenter = stub_segmenter()
prepare = segmenter.prepare


def crash_on_the_culprit(radiograph):
    if radiograph.shape[0] == {culprit_rows}:
        os.kill(os.getpid(), signal.SIGKILL)  # as a decoder crash or the out-of-memory killer would
    return prepare(radiograph)


segmenter.prepare = crash_on_the_culprit
config = NodeConfig(model="in-process", spool={spool!r}, port=0, batch_size=4, allow_uncalibrated=True)
DicomNode(config, segmenter=segmenter).serve_forever()
"""


def test_an_instance_that_kills_the_node_fails_after_3_starts_and_its_batch_neighbours_are_segmented_real_films(
    tmp_path: Path,
) -> None:
    from lungseg_monai.pacs.spool import MAX_PROCESSING_ATTEMPTS, Spool

    innocent = chest_instances(tmp_path / "in", 2, longest_side=SMALL_FILM)
    culprit_ds = shrunk(pydicom.dcmread(innocent[0]), SMALL_FILM - 56)
    culprit_ds.SOPInstanceUID = culprit_ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    culprit = tmp_path / "in" / "culprit.dcm"
    culprit_ds.save_as(culprit)
    culprit_rows = int(culprit_ds.Rows)
    assert culprit_rows not in {int(pydicom.dcmread(p, stop_before_pixels=True).Rows) for p in innocent}
    spool = tmp_path / "spool"
    inbox = Spool(spool)
    for path in (innocent[0], culprit, innocent[1]):  # one batch, the culprit in the middle
        inbox.receive(_sop_uid(path), lambda f, path=path: f.write(path.read_bytes()), calling_aet="MODALITY")
    driver = tmp_path / "crashing_node.py"
    driver.write_text(_CRASHING_NODE.format(tests=str(TESTS_DIR), culprit_rows=culprit_rows, spool=str(spool)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    crashes = 0
    for _start in range(MAX_PROCESSING_ATTEMPTS + 2):
        with open(tmp_path / f"node-{_start}.log", "wb") as log:
            node = subprocess.Popen([sys.executable, str(driver)], stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for(
            lambda node=node: node.poll() is not None
            or Spool(spool, read_only=True).status()["waiting_to_segment"] == 0,
            120,
            "the node's crash or the end of the work",
        )
        if node.poll() is None:
            node.terminate()
            assert node.wait(timeout=60) == 0
            break
        assert node.returncode == -signal.SIGKILL, (tmp_path / f"node-{_start}.log").read_text()[-3000:]
        crashes += 1
    assert crashes == MAX_PROCESSING_ATTEMPTS
    status = Spool(spool, read_only=True).status()
    assert (status["segmented"], status["failed"], status["waiting_to_segment"]) == (2, 1, 0)
    reason = json.loads((spool / "failed" / f"{_sop_uid(culprit)}.json").read_text())["reason"]
    assert reason == (
        f"processing was interrupted {MAX_PROCESSING_ATTEMPTS} times (the node crashed or was killed while "
        "processing it)"
    )
    assert (spool / "failed" / f"{_sop_uid(culprit)}.dcm").read_bytes() == culprit.read_bytes()


def test_a_corrected_copy_received_while_the_first_is_segmented_is_segmented_and_sent_too_real_film(
    tmp_path: Path,
) -> None:
    [first] = chest_instances(tmp_path / "in", 1, longest_side=SMALL_FILM)
    corrected = tmp_path / "in" / "corrected.dcm"
    ds = pydicom.dcmread(first)
    ds.PatientName = "CORRECTED^NAME"  # a PACS correction keeps the SOP Instance UID
    ds.save_as(corrected)
    segmenter = stub_segmenter()
    prepare, segmenting, go_on = segmenter.prepare, threading.Event(), threading.Event()

    def held_first_time(radiograph):  # noqa: ANN001, ANN202 - keeps the first segmentation going
        if not segmenting.is_set():
            segmenting.set()
            go_on.wait(60)
        return prepare(radiograph)

    segmenter.prepare = held_first_time
    with dicom_peer() as peer, running_node(
        segmenter, spool=str(tmp_path / "spool"), send_to=[peer.address], **FAST
    ) as node:
        assert c_store(node.port, [first]) == [0]
        assert segmenting.wait(60), "the first copy's segmentation started"
        assert c_store(node.port, [corrected]) == [0]
        go_on.set()
        wait_for(lambda: node.status()["segmented"] == 2, 60, "both copies segmented")
        wait_for(lambda: node.status()["waiting_to_send"] == 0, 60, "every result sent")
        status = node.status()
    assert (status["received"], status["segmented"], status["failed"]) == (2, 2, 0)
    last_seg = [d for d in peer.received if d.Modality == "SEG"][-1]
    last_sr = [d for d in peer.received if d.Modality == "SR"][-1]
    assert str(last_seg.PatientName) == str(last_sr.PatientName) == "CORRECTED^NAME"


def test_a_batch_the_network_fails_on_is_segmented_one_at_a_time_instead_of_failing_real_films(
    tmp_path: Path,
) -> None:
    from lungseg_monai.pacs.processing import InstanceProcessor
    from lungseg_monai.pacs.spool import Spool

    sources = chest_instances(tmp_path / "in", 3, longest_side=SMALL_FILM)
    spool = Spool(tmp_path / "spool")
    for path in sources:
        spool.receive(_sop_uid(path), lambda f, path=path: f.write(path.read_bytes()), calling_aet="MODALITY")
    segmenter = stub_segmenter()
    forward_qc = segmenter.forward_qc

    def out_of_memory_on_batches(batch, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if batch.shape[0] > 1:
            raise RuntimeError("CUDA out of memory (for batches of more than one here)")
        return forward_qc(batch, *args, **kwargs)

    segmenter.forward_qc = out_of_memory_on_batches
    InstanceProcessor(segmenter, spool, ["pacs"]).process(spool.claim(4))
    status = spool.status()
    assert (status["segmented"], status["failed"], status["waiting_to_segment"], status["waiting_to_send"]) == (
        3,
        0,
        0,
        3,
    )


def _node_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lungseg_monai.cli", "node", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_a_second_node_on_a_spool_in_use_exits_naming_the_spool_and_the_pid_while_status_reads_it(
    tmp_path: Path,
) -> None:
    from lungseg_monai.pacs.config import NodeConfig
    from lungseg_monai.pacs.node import DicomNode
    from lungseg_monai.pacs.spool import SpoolInUseError

    spool = tmp_path / "spool"
    in_use = f"the spool '{spool}' is in use by another lungseg node (PID {os.getpid()})"
    with running_node(stub_segmenter(), spool=str(spool), allow_uncalibrated=True):
        second = _node_cli("--model", str(tmp_path / "any.pt"), "--spool", str(spool), "--port", "0")
        assert second.returncode == 1
        assert in_use in second.stderr
        with pytest.raises(SpoolInUseError, match=f"^{re.escape(in_use)}"):
            DicomNode(NodeConfig(model="in-process", spool=str(spool), port=0), segmenter=stub_segmenter())
        writing = spool / "inbox" / ".1.2.3.dcm.a1b2c3.tmp.dcm"  # as the running node writes an instance
        writing.write_bytes(b"half")
        status = _node_cli("--status", "--spool", str(spool))
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["received"] == 0
        assert writing.exists(), "--status changes nothing in the running node's spool"
    with running_node(stub_segmenter(), spool=str(spool), allow_uncalibrated=True) as node:  # released on stop
        assert node.port > 0


# -- item 1: a model without QC calibration ------------------------------------------------------------------------


def test_a_model_without_qc_calibration_is_refused_at_start_unless_allowed(tmp_path: Path) -> None:
    from lungseg_monai.pacs.config import NodeConfig
    from lungseg_monai.pacs.node import DicomNode
    from lungseg_monai.qc.quality import UncalibratedModelError

    segmenter = stub_segmenter()
    assert segmenter.qc is None
    spool = str(tmp_path / "spool")
    node = DicomNode(NodeConfig(model="in-process", spool=spool, port=0), segmenter=segmenter)
    with pytest.raises(UncalibratedModelError) as refused:
        node.start()
    message = str(refused.value)
    assert "the model has no QC calibration" in message
    assert "calibrate_qc" in message and "--allow-uncalibrated" in message
    with running_node(segmenter, spool=spool, allow_uncalibrated=True) as started:  # the spool was released
        assert started.port > 0


def test_lungseg_node_exits_with_the_reason_for_an_uncalibrated_model_file_and_starts_with_allow_uncalibrated(
    tmp_path: Path,
) -> None:
    import torch

    model = tmp_path / "model.ts"
    torch.jit.script(stub_segmenter().network).save(str(model))
    model.with_suffix(".json").write_text(json.dumps(STUB_CARD))  # a model card without "qc"
    common = ["--model", str(model), "--device", "cpu", "--port", str(free_port())]
    refused = _node_cli(*common, "--spool", str(tmp_path / "spool"))
    assert refused.returncode == 1
    assert "quality control is unavailable: the model has no QC calibration" in refused.stderr
    assert "--allow-uncalibrated" in refused.stderr

    log = tmp_path / "node.log"
    with open(log, "wb") as out:
        node = subprocess.Popen(
            [sys.executable, "-m", "lungseg_monai.cli", "node", *common, "--spool", str(tmp_path / "spool"),
             "--allow-uncalibrated"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: f"DICOM node {NODE_AET} listening" in log.read_text(), 120, "the node's start")
        assert "quality control is unavailable" in log.read_text()
    finally:
        node.terminate()
        assert node.wait(timeout=60) == 0


def test_a_refusal_of_a_whole_request_is_not_counted_against_its_results_sent_one_by_one_synthetic_files(
    tmp_path: Path,
) -> None:
    """HTTP 413 for a request of several results (a proxy's size limit): each result is sent on its own before
    any refusal is counted, so a backlog is delivered instead of being set aside in undeliverable/."""
    from lungseg_monai.pacs.config import NodeConfig
    from lungseg_monai.pacs.sender import Sender
    from lungseg_monai.pacs.spool import Spool

    spool = Spool(tmp_path / "spool")
    with stow_server() as server:
        server.max_parts = 1
        config = NodeConfig(model="in-process", spool=str(tmp_path / "spool"), stow_to=[_url(server)], **FAST)
        sender = Sender(spool, config)
        destination = next(iter(sender.destinations))
        for n in range(3):
            sop = f"1.2.3.{n}"
            sr = _synthetic_result(spool.results_dir(sop), "SR", "1.2.840.10008.5.1.4.1.1.88.22")
            spool.complete(sop, [sr], [destination])
        assert sender.deliver_due()
        assert sorted(server.stored) == ["SR", "SR", "SR"]
    status = spool.status()
    assert (status["sent"], status["undeliverable"], status["waiting_to_send"]) == (3, 0, 0)
