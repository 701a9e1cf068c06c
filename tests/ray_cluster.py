"""A real two-node Ray cluster on this machine for the scale-out tests: a head and a worker node, each with one
CPU, started with ``ray start`` on free ports and token authentication, stopped (every process it started)
afterwards. Skips with a reason where Ray is not installed, fails instead under ``CI=true``.

Ray 2.60 has no option to bind its servers to one address: its GCS and raylets listen on every interface.
The cluster therefore requires a token made for the test (``RAY_AUTH_MODE=token``), which nothing outside
the test has.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from orthanc import free_port

IN_CI = os.environ.get("CI", "").lower() == "true"
RAY = Path(sys.executable).parent / "ray"


def require_ray() -> None:
    """Skip (fail under CI=true) when Ray or its ``ray`` command is missing."""
    try:
        import ray  # noqa: F401
    except ImportError:
        reason = "Ray is not installed (pip install -e '.[ray]')"
    else:
        reason = "" if RAY.is_file() else f"no '{RAY}' command beside this Python"
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


def _ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _children() -> dict[int, list[int]]:
    """Parent PID -> child PIDs, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    return children


def _alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting for its parent does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _with_descendants(pids: list[int]) -> list[int]:
    children, found, queue = _children(), set(), list(pids)
    while queue:
        pid = queue.pop()
        if pid not in found:
            found.add(pid)
            queue += children.get(pid, [])
    return sorted(found)


def processes_matching(text: str) -> list[int]:
    """PIDs of this machine's processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


@dataclass
class RayCluster:
    """Address and environment of a running test cluster.

    Attributes:
        address: the GCS address (``127.0.0.1:PORT``) to pass to ``--ray``.
        env: the environment a driver needs (the token).
        temp_dir: the cluster's session folder (the processes started name it).
    """

    address: str
    env: dict[str, str]
    temp_dir: Path

    def stop(self) -> None:
        """Stop every process of this cluster and their children: ``SIGTERM``, then ``SIGKILL`` after 10 s."""
        # Ray's agents rename themselves (ray::DashboardAgent ...): found as children of the processes named.
        started = _with_descendants(processes_matching(str(self.temp_dir)))
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            pids = [pid for pid in started if _alive(pid)]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline:
                pids = [pid for pid in pids if _alive(pid)]
                time.sleep(0.2)


def _start(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run([str(RAY), "start", *args], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"ray start {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")


@contextlib.contextmanager
def running_ray_cluster() -> Iterator[RayCluster]:
    """A head and one worker node on this machine, one CPU each; stopped on exit."""
    require_ray()
    temp_dir = Path(tempfile.mkdtemp(prefix="lsray"))  # short: Ray's socket paths must stay under 107 bytes
    token = temp_dir / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    head = _ports(11)
    worker = _ports(10)
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    cluster = RayCluster(f"127.0.0.1:{head[0]}", env, temp_dir)
    try:
        _start(
            [
                "--head",
                f"--port={head[0]}",
                "--include-dashboard=false",
                f"--ray-client-server-port={head[1]}",
                f"--node-manager-port={head[2]}",
                f"--object-manager-port={head[3]}",
                f"--dashboard-agent-listen-port={head[4]}",
                f"--dashboard-agent-grpc-port={head[5]}",
                f"--metrics-export-port={head[6]}",
                f"--runtime-env-agent-port={head[7]}",
                f"--worker-port-list={head[8]},{head[9]},{head[10]}," + ",".join(map(str, _ports(12))),
                *common,
            ],
            env,
        )
        _start(
            [
                f"--address={cluster.address}",
                f"--node-manager-port={worker[0]}",
                f"--object-manager-port={worker[1]}",
                f"--dashboard-agent-listen-port={worker[2]}",
                f"--dashboard-agent-grpc-port={worker[3]}",
                f"--metrics-export-port={worker[4]}",
                f"--runtime-env-agent-port={worker[5]}",
                "--worker-port-list=" + ",".join(map(str, [*worker[6:], *_ports(12)])),
                *common,
            ],
            env,
        )
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
