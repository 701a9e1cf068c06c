"""Which checkpoint the MONAI Label app serves, and reloading it when training publishes a new one.

The app starts from the model it was given (``--conf model PATH``, never modified). Training in the
app writes its result to ``<workdir>/models/model.pt`` (+ ``model.json``); from then on that file is
served, and every request checks whether it changed on disk, so a model fine-tuned by another
process is picked up by the next ``/infer`` without a restart.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path

from lungseg_monai.io.checkpoint import CheckpointError
from lungseg_monai.inference import LungSegmenter
from lungseg_monai.inference.options import DEFAULT_PRECISION
from lungseg_monai.outputs import atomic_path

__all__ = ["ModelStore", "ReloadingSegmenter", "BASE_MODEL_KEY", "FINE_TUNED_FROM_KEY"]

logger = logging.getLogger(__name__)

# Model-card keys the app adds to a fine-tuned model.json.
BASE_MODEL_KEY = "base_model"  # the initial model the chain of fine-tunings started from
FINE_TUNED_FROM_KEY = "fine_tuned_from"  # the checkpoint this one was fine-tuned from


class ModelStore:
    """The initial model and the fine-tuned model that training publishes in ``workdir``.

    ``<workdir>/models/model.pt`` is served when it exists and its model card says it descends
    from the same initial model; a fine-tuned model left in ``workdir`` by a server started with
    another model is ignored (with a warning) and the initial model is served.

    Args:
        initial: the model to start from (``models/model.pt`` with its ``model.json``).
        workdir: where fine-tuned models are published.

    Raises:
        FileNotFoundError: ``initial`` does not exist.
    """

    def __init__(self, initial: str | os.PathLike, workdir: str | os.PathLike) -> None:
        self.initial = Path(initial).resolve()
        if not self.initial.is_file():
            raise FileNotFoundError(
                f"model '{initial}' does not exist; pass the models/model.pt written by the bundle's training"
            )
        self.workdir = Path(workdir)
        self.published = self.workdir / "models" / "model.pt"
        self._warned_foreign = False

    def current(self) -> Path:
        """The checkpoint to serve now: the published fine-tuned model if it is ours, else the initial one."""
        card_path = self.published.with_suffix(".json")
        if not (self.published.is_file() and card_path.is_file()):
            return self.initial
        try:
            base = json.loads(card_path.read_text()).get(BASE_MODEL_KEY)
        except (OSError, ValueError, AttributeError):
            base = None
        if base == str(self.initial):
            return self.published
        if not self._warned_foreign:
            logger.warning(
                "ignoring '%s': it was fine-tuned from '%s', not from '%s'; serving the latter",
                self.published,
                base,
                self.initial,
            )
            self._warned_foreign = True
        return self.initial

    def publish(self, trained: str | os.PathLike, fine_tuned_from: str | os.PathLike) -> Path:
        """Make a trained ``model.pt`` (with its ``model.json``) the served model.

        The card is written first and the weights last, each atomically, so a server that sees the
        new weights also sees their card.

        Returns:
            the published ``model.pt`` path.
        """
        trained = Path(trained)
        card = json.loads(trained.with_suffix(".json").read_text())
        card[BASE_MODEL_KEY] = str(self.initial)
        card[FINE_TUNED_FROM_KEY] = str(Path(fine_tuned_from).resolve())
        with atomic_path(self.published.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(card, indent=2, default=str))
        with atomic_path(self.published) as tmp:
            shutil.copyfile(trained, tmp)
        logger.info("published fine-tuned model '%s' (from '%s')", self.published, trained)
        return self.published


def _file_key(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return str(path), st.st_ino, st.st_mtime_ns, st.st_size


class ReloadingSegmenter:
    """A :class:`LungSegmenter` for the store's current checkpoint, reloaded when the file changes.

    Thread-safe: loading happens under a lock; prediction runs under ``torch.inference_mode`` on a
    network in eval mode, which concurrent requests can share.

    Args:
        store: where the checkpoint to serve is found.
        device: torch device; None picks CUDA when available.
        precision: the network's precision (see :func:`~lungseg_monai.inference.resolve_precision`).
    """

    def __init__(self, store: ModelStore, device: str | None = None, precision: str = DEFAULT_PRECISION) -> None:
        self.store = store
        self.device = device
        self.precision = precision
        self._lock = threading.Lock()
        self._segmenter: LungSegmenter | None = None
        self._path: Path | None = None
        self._key: tuple[str, int, int, int] | None = None

    def get(self) -> tuple[LungSegmenter, Path]:
        """The segmenter for the current checkpoint and that checkpoint's path.

        A checkpoint that fails to load is logged and the previous one kept serving.

        Raises:
            CheckpointError: the very first load fails.
        """
        path = self.store.current()
        key = _file_key(path)
        with self._lock:
            if key != self._key:
                try:
                    segmenter = LungSegmenter.from_model(path, device=self.device, precision=self.precision)
                except (CheckpointError, OSError, ValueError, KeyError) as e:
                    if self._segmenter is None:
                        raise
                    logger.error("cannot load '%s' (%s); still serving '%s'", path, e, self._path)
                else:
                    self._segmenter, self._path = segmenter, path
                    logger.info("serving model '%s'", path)
                self._key = key
            assert self._segmenter is not None and self._path is not None
            return self._segmenter, self._path
