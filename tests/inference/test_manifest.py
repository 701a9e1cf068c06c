"""The output manifest: names kept across runs, and outputs reused only for the same content and settings."""

from __future__ import annotations

import os
from pathlib import Path

from lungseg_monai.inference.manifest import MANIFEST_FILE, OutputManifest, input_state

# What `cp -p` or `rsync -a` leave on a file copied from an old archive.
OLD_TIME = 1_000_000_000  # 2001-09-09


def test_content_changed_in_place_with_the_same_size_and_mtime_is_hashed_again_synthetic(tmp_path: Path) -> None:
    """rsync-style replacement: same size, old mtime put back; the ctime gives it away."""
    path = tmp_path / "img.raw"
    path.write_bytes(b"\x00" * 64)
    os.utime(path, (OLD_TIME, OLD_TIME))
    known = input_state(path)
    assert input_state(path, known) == known  # unchanged stat: the recorded hash is reused
    path.write_bytes(b"\x01" * 64)
    os.utime(path, (OLD_TIME, OLD_TIME))
    changed = input_state(path, known)
    assert (changed.size, changed.mtime_ns) == (known.size, known.mtime_ns)
    assert changed.sha256 != known.sha256


def test_manifest_round_trip_keeps_entries_and_compares_settings_as_json_synthetic(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"a")
    state = input_state(tmp_path / "a.png")
    settings = {"model": "m-1", "image_size": 64, "threshold": 0.5, "postprocess": "CleanLungMask()", "x": (1, 2)}
    manifest = OutputManifest(tmp_path / "out" / MANIFEST_FILE)
    manifest.record("a", state, "m-1", settings, ["mask", "measurements"])
    assert manifest.save() and not manifest.save()  # the second call has nothing new to write
    back = OutputManifest.load(tmp_path / "out")
    assert back.names() == {(tmp_path / "a.png").resolve(): "a"}
    assert back.valid_outputs("a", state, "m-1", settings) == {"mask", "measurements"}
    assert back.valid_outputs("a", state, "m-2", settings) == set()
    assert back.valid_outputs("a", state, "m-1", {**settings, "threshold": 0.4}) == set()
    back.forget("a", ["mask"])
    assert back.stale("a", "mask") and not back.stale("a", "measurements") and not back.stale("b", "mask")
