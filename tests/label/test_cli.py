"""``lungseg label`` refuses bad arguments before starting a server."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from lungseg_monai.cli import main


def test_label_refuses_a_missing_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert main(["label", "--studies", str(tmp_path), "--model", str(tmp_path / "missing.pt")]) == 2
    assert f"model '{tmp_path / 'missing.pt'}' does not exist" in caplog.text
    assert not (tmp_path / ".lungseg_label").exists()


def test_label_refuses_a_missing_studies_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "model.pt").write_bytes(b"x")
    with caplog.at_level(logging.ERROR):
        assert main(["label", "--studies", str(tmp_path / "nope"), "--model", str(tmp_path / "model.pt")]) == 2
    assert f"studies folder '{tmp_path / 'nope'}' does not exist" in caplog.text


def test_label_refuses_a_malformed_dicomweb_url(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "model.pt").write_bytes(b"x")
    with caplog.at_level(logging.ERROR):
        assert main(["label", "--studies", "http://", "--model", str(tmp_path / "model.pt")]) == 2
    assert "--studies: DICOMweb URL 'http://' is not http(s)://HOST[:PORT]/PATH" in caplog.text


@pytest.mark.parametrize(
    ("flag", "conf"), [([], []), (["--train-on-automatic"], ["--conf", "train_on_automatic", "true"])]
)
def test_train_on_automatic_reaches_the_server_as_conf(tmp_path: Path, flag: list[str], conf: list[str]) -> None:
    from lungseg_monai.cli import build_parser
    from lungseg_monai.label.cli import start_server_args

    url = "http://127.0.0.1:8042/dicom-web"
    args = build_parser().parse_args(["label", "--studies", url, "--model", str(tmp_path / "model.pt"), *flag])
    argv = start_server_args(args, tmp_path / "app", tmp_path)
    pairs = [argv[i : i + 3] for i, arg in enumerate(argv) if arg == "--conf"]
    assert [p for p in pairs if p[1] == "train_on_automatic"] == ([conf] if conf else [])


def test_label_help_documents_train_on_automatic(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["label", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--train-on-automatic" in help_text
    assert "only MANUAL and SEMIAUTOMATIC SEGs are training labels" in help_text
    assert "'QC reject:'" in help_text


def test_a_training_datasets_masks_become_final_labels_of_its_images(tmp_path: Path) -> None:
    """A folder with images/ and masks/ (a training dataset) is served: its masks become the images' final labels,
    a label saved in the app is never replaced, and a mask of the wrong size is named."""
    pytest.importorskip("monailabel", reason="the label extra is not installed")
    from conftest import SAMPLE_DATA

    from lungseg_monai.label.datastore import RadiographDatastore, import_training_masks
    from lungseg_monai.label.errors import BadRequestError

    names = sorted(p.stem for p in (SAMPLE_DATA / "images").glob("*.png"))[:3]
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for name in names:
        shutil.copyfile(SAMPLE_DATA / "images" / f"{name}.png", tmp_path / "images" / f"{name}.png")
    for name in names[:2]:
        shutil.copyfile(SAMPLE_DATA / "masks" / f"{name}.png", tmp_path / "masks" / f"{name}.png")
    assert import_training_masks(tmp_path) == (2, 1)
    store = RadiographDatastore(str(tmp_path / "images"), auto_reload=False)
    assert [bool(store.get_label_by_image_id(n, "final")) for n in names] == [True, True, False]
    assert import_training_masks(tmp_path) == (0, 1)  # already labelled: kept, not imported again

    Image.new("L", (10, 10), 255).save(tmp_path / "masks" / f"{names[2]}.png")  # not its image's size
    with pytest.raises(BadRequestError, match=names[2]):
        import_training_masks(tmp_path)


def test_the_default_workdir_is_outside_the_studies_folder_and_per_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("monailabel", reason="the label extra is not installed")
    from lungseg_monai.label.server import default_workdir

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    studies = tmp_path / "films"
    first, again = default_workdir(str(studies)), default_workdir(str(studies) + "/")
    assert first == again and first.parent == tmp_path / "state" / "lungseg" / "label"
    assert first.name.startswith("films-") and studies not in first.parents
    url = default_workdir("http://127.0.0.1:8042/dicom-web")
    assert url.parent == first.parent and url != first and Path.cwd() not in url.parents


def test_an_earlier_versions_workdir_in_the_studies_folder_stays_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("monailabel", reason="the label extra is not installed")
    from lungseg_monai.label.server import DEFAULT_WORKDIR_NAME, default_workdir

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "films" / DEFAULT_WORKDIR_NAME / "models").mkdir(parents=True)
    assert default_workdir(str(tmp_path / "films")) == tmp_path / "films" / DEFAULT_WORKDIR_NAME


def test_lungseg_label_on_a_training_dataset_says_it_serves_images_with_the_masks_as_labels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("monailabel", reason="the label extra is not installed")
    from conftest import SAMPLE_DATA

    for sub in ("images", "masks"):
        shutil.copytree(SAMPLE_DATA / sub, tmp_path / "dataset" / sub, ignore=shutil.ignore_patterns("*[!0-9a-f].png"))
    count = len(list((tmp_path / "dataset" / "masks").glob("*.png")))
    assert count > 0
    with caplog.at_level(logging.INFO):  # stops at the missing model, after the dataset was prepared
        assert main(["label", "--studies", str(tmp_path / "dataset"), "--model", str(tmp_path / "none.pt")]) == 2
    assert f"serving its images/ with {count} mask(s) from masks/ newly saved as final labels" in caplog.text
    assert len(list((tmp_path / "dataset" / "images" / "labels" / "final").glob("*.png"))) == count
