"""A real Orthanc PACS (with its DICOMweb plugin) for tests, started on 127.0.0.1 with free ports.

Orthanc comes from Debian (packages ``orthanc`` and ``orthanc-dicomweb``, installed by
``scripts/install.sh`` when apt-get can); :func:`require_orthanc` skips a test on a user's machine
without it and fails it under ``CI=true``. Every server is started from its own JSON config in a
temporary folder and stopped (and waited for) by the test that started it.

Orthanc 1.10 has no option to bind its DICOM port to one address, so the config limits who may
talk to it instead: HTTP is loopback only (``RemoteAccessAllowed`` false) and DICOM requests are
accepted only from the modalities a test registers (on 127.0.0.1, host checked).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

IN_CI = os.environ.get("CI", "").lower() == "true"
ORTHANC_BINARY = os.environ.get("LUNGSEG_ORTHANC", shutil.which("Orthanc") or "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 30.0


def require_orthanc() -> Path:
    """Skip (or fail under CI=true) when Orthanc or its DICOMweb plugin is not installed."""
    missing = [str(p) for p in (Path(ORTHANC_BINARY), DICOMWEB_PLUGIN) if not p.is_file()]
    if missing:
        message = (
            f"needs Orthanc with its DICOMweb plugin ({', '.join(missing)} missing; "
            "`apt-get install orthanc orthanc-dicomweb`, or run scripts/install.sh as root)"
        )
        if IN_CI:
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    return Path(ORTHANC_BINARY)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    """A running Orthanc: its REST API at :attr:`url`, DICOMweb at :attr:`dicomweb`, DICOM at :attr:`dicom_port`."""

    aet: str
    http_port: int
    dicom_port: int
    folder: Path
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def address(self) -> str:
        """``AET@127.0.0.1:PORT``, the form ``lungseg node --send-to`` takes."""
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def get(self, path: str, **kwargs: Any) -> Any:
        response = requests.get(f"{self.url}{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, data: Any = None, **kwargs: Any) -> Any:
        response = requests.post(f"{self.url}{path}", data=data, timeout=120, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def upload(self, path: str | os.PathLike) -> str:
        """Store a DICOM file through the REST API; returns Orthanc's instance id."""
        return self.post("/instances", Path(path).read_bytes())["ID"]

    def add_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
        """Register a DICOM peer Orthanc may send to and accept stores from."""
        body = {"AET": aet, "Host": host, "Port": port, "AllowEcho": True, "AllowStore": True}
        response = requests.put(f"{self.url}/modalities/{name}", json=body, timeout=30)
        response.raise_for_status()

    def send(self, modality: str, orthanc_ids: list[str], timeout_s: int = 120) -> dict[str, Any]:
        """Tell Orthanc to C-STORE instances to ``modality`` (REST ``/modalities/{id}/store``), synchronously."""
        body = {"Resources": orthanc_ids, "Synchronous": True, "Timeout": timeout_s}
        return self.post(f"/modalities/{modality}/store", json.dumps(body))

    def instances_by_modality(self, modality: str) -> list[dict[str, Any]]:
        """Every stored instance of ``modality`` (e.g. ``SEG``, ``SR``), with its DICOM tags (simplified)."""
        found = self.post(
            "/tools/find", json.dumps({"Level": "Instance", "Query": {"Modality": modality}, "Expand": True})
        )
        return [self.get(f"/instances/{item['ID']}/simplified-tags") | {"ID": item["ID"]} for item in found]

    def file(self, orthanc_id: str) -> bytes:
        response = requests.get(f"{self.url}/instances/{orthanc_id}/file", timeout=60)
        response.raise_for_status()
        return response.content

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_orthanc(folder: Path, aet: str = "ORTHANC", dicom_port: int | None = None) -> Orthanc:
    """Start Orthanc with DICOMweb from a config in ``folder``; returns once its REST API answers.

    ``dicom_port``: a given DICOM port (a destination that comes up later), else a free one.
    """
    binary = require_orthanc()
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), dicom_port or free_port()
    config = {
        "Name": "lungseg-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {},
        "DicomModalitiesInDatabase": True,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1,
        "HttpThreadsCount": 8,
        "DicomThreadsCount": 4,
        "DicomScuTimeout": 30,
        "ConcurrentJobs": 2,
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen([str(binary), str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    log.close()
    server = Orthanc(aet, http_port, dicom_port, folder, process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited {process.returncode}: {(folder / 'orthanc.log').read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{server.url}/system", timeout=2).ok:
                return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"Orthanc did not answer on {server.url} within {START_TIMEOUT_S:.0f} s")


@contextlib.contextmanager
def running_orthanc(folder: Path, aet: str = "ORTHANC", dicom_port: int | None = None) -> Iterator[Orthanc]:
    """:func:`start_orthanc`, stopped on exit."""
    server = start_orthanc(folder, aet, dicom_port)
    try:
        yield server
    finally:
        server.stop()
