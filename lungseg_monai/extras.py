"""Which optional extra a command needs, and the message and exit code when it is not installed.

``pip install lungseg_monai`` reads and segments files; the bundle's workflows need the ``train``
extra (Ignite, TensorBoard), the DICOM node and DICOMweb the ``pacs`` extra, ``lungseg label`` the
``label`` extra (MONAI Label and its pins), ``lungseg infer --ray`` the ``ray`` extra (Ray Data). A
command whose extra is missing says which one to install and exits with :data:`EXIT_MISSING_EXTRA`,
instead of failing later with an ImportError; the bundle's workflows raise :func:`require_extra`'s
ImportError first thing.

Example:
    >>> missing_extra("pacs", "json") is None
    True
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXIT_MISSING_EXTRA", "EXTRA_MODULES", "missing_extra", "require_extra"]

EXIT_MISSING_EXTRA = 2
# extra -> the modules it brings that the commands import
EXTRA_MODULES = {
    "train": ("ignite", "tensorboard"),
    "pacs": ("pynetdicom", "dicomweb_client"),
    "label": ("monailabel",),
    "ray": ("ray",),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None for it (excluded)
        return False


def missing_extra(extra: str, *modules: str) -> str | None:
    """None when ``modules`` (default: all of the extra's) can be imported, else the message to print.

    Raises:
        KeyError: an unknown extra.
    """
    missing = [m for m in modules or EXTRA_MODULES[extra] if not _installed(m)]
    if not missing:
        return None
    return (
        f"this needs the '{extra}' extra ({', '.join(missing)} not installed): "
        f"pip install 'lungseg_monai[{extra}]' (from a checkout: pip install -e '.[{extra}]')"
    )


def require_extra(extra: str, what: str) -> None:
    """Raise an ImportError saying that ``what`` needs ``extra`` when the extra is not installed.

    The bundle's configs call it first (``initialize``), so a workflow without the ``train`` extra stops
    with this message instead of Ignite's ``No module named 'ignite'`` from deep inside MONAI.

    Raises:
        ImportError: the extra's modules cannot be imported.
    """
    if problem := missing_extra(extra):
        raise ImportError(f"{what}: {problem}")
