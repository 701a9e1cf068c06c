"""A real ``lungseg label`` server for tests, on a loopback port, and the requests its clients make.

Started as a subprocess (``python -m lungseg_monai.cli label ...``) on one CPU thread, with a dead
HTTP proxy in its environment so that any attempt to fetch something from the internet fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import REPO_ROOT
from orthanc import free_port
from PIL import Image

from lungseg_monai.cli import main as lungseg_main
from lungseg_monai.label import MODEL_NAME

STARTUP_TIMEOUT_S = 120
TRAIN_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 120


@dataclass
class LabelServer:
    url: str
    process: subprocess.Popen
    log: Path
    studies: str | Path
    workdir: Path
    model: Path
    session: requests.Session

    def log_tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else "(no log)"

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(f"{self.url}{path}", params=params, timeout=REQUEST_TIMEOUT_S)

    def infer(self, image_id: str, **params: str) -> requests.Response:
        query = {"image": image_id, "output": "image", **params}
        return self.session.post(f"{self.url}/infer/{MODEL_NAME}", params=query, timeout=REQUEST_TIMEOUT_S)

    def infer_params(self, image_id: str) -> dict:
        response = self.session.post(
            f"{self.url}/infer/{MODEL_NAME}", params={"image": image_id, "output": "json"}, timeout=REQUEST_TIMEOUT_S
        )
        assert response.status_code == 200, response.text
        return response.json()

    def put_label(self, image_id: str, filename: str, content: bytes, tag: str | None = None) -> requests.Response:
        params = {"image": image_id, **({"tag": tag} if tag else {})}
        files = {"label": (filename, content)}
        return self.session.put(f"{self.url}/datastore/label", params=params, files=files, timeout=REQUEST_TIMEOUT_S)

    def model_checksum(self) -> str:
        return self.get(f"/model/info/{MODEL_NAME}").json()["checksum"]

    def train(self, **params: Any) -> dict[str, Any]:
        """POST /train/MODEL and wait until the task is no longer SUBMITTED or RUNNING; returns the task."""
        started = self.session.post(f"{self.url}/train/{MODEL_NAME}", json=params, timeout=REQUEST_TIMEOUT_S)
        assert started.status_code == 200, started.text
        deadline = time.monotonic() + TRAIN_TIMEOUT_S
        task = started.json()
        while task["status"] in ("SUBMITTED", "RUNNING"):
            assert time.monotonic() < deadline, f"training still {task['status']} after {TRAIN_TIMEOUT_S} s"
            time.sleep(1)
            task = self.get("/train/").json()
        return task


def png_bytes(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def single_threaded_torch() -> None:
    # Same device and thread count as the server, so that probabilities agree to the last bit.
    import torch

    torch.set_num_threads(1)


def expected_mask(model: Path, image: Path, out: Path) -> np.ndarray:
    """The (rows, columns) 0/1 mask ``lungseg infer --model MODEL IMAGE -o OUT`` writes (as 0/255 PNG)."""
    single_threaded_torch()
    argv = ["infer", str(image), "-o", str(out), "--model", str(model), "--device", "cpu", "--batch-size", "1"]
    assert lungseg_main([*argv, "--formats", "mask", "--overwrite", "--no-progress"]) == 0
    (mask_png,) = (out / "masks").glob("*.png")
    with Image.open(mask_png) as img:
        return (np.asarray(img) > 0).astype(np.uint8)


@contextlib.contextmanager
def running_label_server(
    studies: str | Path, model: Path, workdir: Path, extra_args: Sequence[str] = ()
) -> Iterator[LabelServer]:
    """``lungseg label --studies STUDIES --model MODEL --workdir WORKDIR`` on a free port; stopped on exit."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "server.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        # Nothing may be fetched from the internet: any attempt fails on this dead proxy.
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    cmd = [
        sys.executable, "-m", "lungseg_monai.cli", "label",
        "--studies", str(studies), "--model", str(model), "--workdir", str(workdir),
        "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", *extra_args,
    ]  # fmt: skip
    session = requests.Session()
    session.trust_env = False  # loopback only, never through a proxy
    with open(log, "w") as log_file:
        process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    server = LabelServer(f"http://127.0.0.1:{port}", process, log, studies, workdir, model, session)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"lungseg label exited with {process.returncode} before serving:\n{server.log_tail()}")
            try:
                if session.get(f"{server.url}/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no answer from /info within {STARTUP_TIMEOUT_S} s:\n{server.log_tail()}")
            time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        session.close()
