"""Boolean bundle flags given on the command line (where MONAI passes them on as strings)."""

from __future__ import annotations

import pytest
from monai.bundle import ConfigParser

from lungseg_monai.bundle_utils import as_bool

from conftest import TRAIN_CONFIG


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("False", False),
        (" yes ", True),
        ("off", False),
        (1, True),
        (0, False),
    ],
)
def test_as_bool_reads_command_line_spellings(value: bool | int | str, expected: bool) -> None:
    assert as_bool(value) is expected


@pytest.mark.parametrize("value", ["maybe", "", 2, None])
def test_as_bool_refuses_anything_else(value: object) -> None:
    with pytest.raises(ValueError, match=f"resume must be true or false, got {value!r}"):
        as_bool(value, "resume")  # type: ignore[arg-type]


def _training_checkpoint_index(parser: ConfigParser) -> int:
    handlers = parser["train"]["handlers"]
    return next(
        i
        for i, h in enumerate(handlers)
        if isinstance(h, dict) and h.get("_target_", "").endswith("TrainingCheckpoint")
    )


@pytest.mark.parametrize(("flag", "expected"), [("false", False), ("true", True), (False, False)])
def test_resume_flag_reaches_the_training_checkpoint_as_a_bool(flag: str | bool, expected: bool) -> None:
    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser["resume"] = flag
    index = _training_checkpoint_index(parser)
    assert parser.get_parsed_content(f"train#handlers#{index}#resume") is expected


@pytest.mark.parametrize(("flag", "expected"), [("false", False), ("no", False), (False, False)])
def test_pretrained_flag_from_the_command_line_is_a_bool(flag: str | bool, expected: bool) -> None:
    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser["pretrained"] = flag
    assert parser.get_parsed_content("network_def#pretrained") is expected


def test_the_model_card_keys_are_one_list() -> None:
    """train.json's model_card holds exactly MODEL_CARD_KEYS, and inference.json and evaluate.json take exactly
    those from the trained model's card (each stays a top-level key so a command-line value overrides it)."""
    import json

    from conftest import BUNDLE_DIR

    from lungseg_monai.inference.predictor import MODEL_CARD_KEYS

    configs = {name: json.loads((BUNDLE_DIR / "configs" / f"{name}.json").read_text()) for name in
               ("train", "inference", "evaluate")}  # fmt: skip
    assert tuple(configs["train"]["model_card"]) == MODEL_CARD_KEYS
    for name in ("inference", "evaluate"):
        from_card = [k for k, v in configs[name].items() if isinstance(v, str) and v.startswith("$@trained_card[")]
        assert tuple(from_card) == MODEL_CARD_KEYS, name
