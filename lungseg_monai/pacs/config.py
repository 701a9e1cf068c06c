"""The DICOM node's settings (``lungseg node``), from the command line or a JSON config file.

A config file holds the same keys as :class:`NodeConfig`'s fields, e.g.::

    {"aet": "LUNGSEG", "port": 11112, "bind": "127.0.0.1", "model": "models/model.pt",
     "spool": "/var/spool/lungseg", "send_to": ["PACS@10.0.0.5:104"],
     "stow_to": ["http://pacs:8042/dicom-web"], "allowed_aets": ["PACS", "CR_ROOM_2"]}

Command-line options given explicitly override the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_AET", "DEFAULT_PORT", "Destination", "NodeConfig", "load_config", "parse_destination"]

DEFAULT_AET = "LUNGSEG"
DEFAULT_PORT = 11112
DEFAULT_BIND = "127.0.0.1"
DEFAULT_MAX_ASSOCIATIONS = 8
# Retries of a destination that is down or refuses: first after 2 s, doubling up to 5 minutes.
DEFAULT_RETRY_FIRST_S = 2.0
DEFAULT_RETRY_MAX_S = 300.0
# A result a destination refuses this many times is set aside in undeliverable/.
DEFAULT_MAX_REFUSALS = 5
# An AE title is at most 16 characters of the default character repertoire, no backslash.
_AET_PATTERN = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def _check_aet(aet: str, what: str) -> str:
    if not _AET_PATTERN.match(aet) or not aet.strip():
        raise ValueError(f"{what} {aet!r} is not a DICOM AE title (1 to 16 printable characters, no backslash)")
    return aet.strip()


@dataclass(frozen=True)
class Destination:
    """Where results go: a DICOM peer (C-STORE) or a DICOMweb server (STOW-RS).

    Attributes:
        kind: ``"dicom"`` or ``"stow"``.
        aet, host, port: the DICOM peer (kind ``dicom``).
        url: the DICOMweb base URL (kind ``stow``).
    """

    kind: str
    aet: str = ""
    host: str = ""
    port: int = 0
    url: str = ""

    @property
    def key(self) -> str:
        """A file-name-safe, stable name for this destination's outbox folder."""
        text = f"{self.aet}@{self.host}:{self.port}" if self.kind == "dicom" else self.url
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:40]
        return f"{self.kind}-{safe}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}" if self.kind == "dicom" else self.url


def parse_destination(text: str) -> Destination:
    """``AET@HOST:PORT`` -> a DICOM destination; ``http(s)://...`` -> a STOW-RS destination.

    Raises:
        ValueError: neither form (the message shows the expected one).
    """
    text = text.strip()
    if text.startswith(("http://", "https://")):
        return Destination("stow", url=text.rstrip("/"))
    match = re.match(r"^(?P<aet>[^@]+)@(?P<host>[^:@]+):(?P<port>\d+)$", text)
    if not match:
        raise ValueError(f"destination {text!r} is neither AET@HOST:PORT (e.g. PACS@10.0.0.5:104) nor a DICOMweb URL")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise ValueError(f"destination {text!r}: port {port} is not between 1 and 65535")
    return Destination("dicom", aet=_check_aet(match["aet"], "destination AE title"), host=match["host"], port=port)


@dataclass
class NodeConfig:
    """Settings of a :class:`~lungseg_monai.pacs.node.DicomNode`.

    Attributes:
        model: a shipped model's name (``vgg16``, ``resnet50``), the bundle's ``models/model.pt`` (model card
            beside it) or an exported ``model.ts``; None: the shipped default (``vgg16``).
        spool: the node's folder: received instances, results and the outbox (see
            :mod:`lungseg_monai.pacs.spool`); must be on a local disk.
        aet: the node's AE title; associations calling another title are rejected.
        port, bind: where it listens (loopback by default: say ``0.0.0.0`` to listen on all).
        send_to: DICOM destinations ``AET@HOST:PORT`` for the results.
        stow_to: DICOMweb base URLs to store the results with STOW-RS.
        allowed_aets: calling AE titles accepted (empty: any).
        max_associations: concurrent associations accepted; more are rejected (busy).
        batch_size: instances per network call (as many as are waiting, up to this); None: by the
            model's input size, as ``lungseg infer`` picks it (:meth:`LungSegmenter.auto_batch_size`).
        overlay: also send a Secondary Capture of the lung contour over the film.
        write_rejected_seg: also send a SEG of a mask quality control rejects (its SR says so).
        check_headers: skip instances whose header names another body part or modality.
        device, precision: as for ``lungseg infer``.
        retry_first_s, retry_max_s: back-off of a destination that cannot be reached (the whole
            destination waits), and of each result a destination refused (that result waits, the
            others go on): doubling from the first to the most.
        max_refusals: a result a destination refuses this many times (a DICOM error status, an
            association rejected permanently, no presentation context for its SOP class, a STOW-RS
            answer refusing it; see :mod:`lungseg_monai.pacs.sender`) is set aside in
            ``undeliverable/`` and counted; a destination that cannot be reached is retried without limit.
        allow_uncalibrated: start with a model that has no usable QC calibration, sending results
            whose QC verdict is ``unavailable``; without it such a model is refused at start.
    """

    spool: str
    model: str | None = None
    aet: str = DEFAULT_AET
    port: int = DEFAULT_PORT
    bind: str = DEFAULT_BIND
    send_to: list[str] = field(default_factory=list)
    stow_to: list[str] = field(default_factory=list)
    allowed_aets: list[str] = field(default_factory=list)
    max_associations: int = DEFAULT_MAX_ASSOCIATIONS
    batch_size: int | None = None
    overlay: bool = False
    write_rejected_seg: bool = False
    check_headers: bool = True
    device: str | None = None
    precision: str = "auto"
    retry_first_s: float = DEFAULT_RETRY_FIRST_S
    retry_max_s: float = DEFAULT_RETRY_MAX_S
    max_refusals: int = DEFAULT_MAX_REFUSALS
    allow_uncalibrated: bool = False

    def __post_init__(self) -> None:
        self.aet = _check_aet(self.aet, "AE title")
        self.allowed_aets = [_check_aet(a, "allowed calling AE title") for a in self.allowed_aets]
        if not 0 <= int(self.port) < 65536:
            raise ValueError(f"port {self.port} is not between 0 and 65535")
        if self.max_associations < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise ValueError(
                f"max_associations and batch_size must be at least 1, got {self.max_associations} and {self.batch_size}"
            )
        if self.max_refusals < 1:
            raise ValueError(f"max_refusals must be at least 1, got {self.max_refusals}")
        for name in ("overlay", "write_rejected_seg", "check_headers", "allow_uncalibrated"):
            value = getattr(self, name)
            if not isinstance(value, bool):  # "false" in a JSON config would be truthy and open a gate
                raise ValueError(f"node setting '{name}' must be true or false (a JSON boolean), got {value!r}")
        self.destinations()  # validates every destination

    def destinations(self) -> list[Destination]:
        """Every destination, DICOM peers first."""
        found = [parse_destination(d) for d in self.send_to] + [parse_destination(u) for u in self.stow_to]
        for text, dest in zip(self.stow_to, found[len(self.send_to) :]):
            if dest.kind != "stow":
                raise ValueError(f"--stow-to {text!r} is not a DICOMweb URL (http://HOST:PORT/dicom-web)")
        return found

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | os.PathLike | None, overrides: Mapping[str, Any]) -> NodeConfig:
    """A :class:`NodeConfig` from a JSON file (optional) with ``overrides`` (explicit CLI options) on top.

    Raises:
        ValueError: unknown keys, a missing model or spool, or invalid values (the message says which).
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"node config '{path}' cannot be read as JSON: {e}") from e
        if not isinstance(values, dict):
            raise ValueError(f"node config '{path}' must hold a JSON object, not {type(values).__name__}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(NodeConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown node setting(s) {unknown}; known: {', '.join(sorted(names))}")
    if not values.get("spool"):
        raise ValueError("the node needs a spool (--spool or the config file)")
    return NodeConfig(**values)
