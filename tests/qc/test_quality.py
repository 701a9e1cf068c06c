"""The verdict rules of QualityControl and its score model, with a hand-made calibration (synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungseg_monai.qc.ood import FeatureDistribution
from lungseg_monai.qc.quality import QCResult, QualityControl, ScoreModel

RANGES = {
    "lung_fraction": [0.2, 0.5],
    "side_ratio": [0.6, 1.0],
    "centre_row": [0.35, 0.6],
    "centre_column": [0.42, 0.58],
    "top": [0.03, 0.25],
    "bottom": [0.6, 1.0],
    "solidity": [0.85, 0.95],
}
GOOD = {
    "n_regions": 2.0,
    "lung_fraction": 0.35,
    "side_ratio": 0.85,
    "centre_row": 0.5,
    "centre_column": 0.5,
    "top": 0.1,
    "bottom": 0.8,
    "solidity": 0.9,
    "uncertain_share": 0.05,
    "soft_dice": 0.97,
    "tta_dice": 0.97,
}


@pytest.fixture(scope="module")
def qc() -> QualityControl:
    rng = np.random.default_rng(0)
    dist = FeatureDistribution.fit(rng.normal(size=(100, 8)))
    # Dice follows soft_dice one to one on these made-up validation rows.
    rows = [{**GOOD, "soft_dice": s, "ood_distance": 1.0, "n_out_of_range": 0.0} for s in np.linspace(0.7, 1.0, 20)]
    model = ScoreModel.fit(rows, [r["soft_dice"] for r in rows], ["soft_dice"], alpha=0.0)
    return QualityControl(
        {"features": dist.to_dict(), "ood_threshold": 3.0, "ranges": RANGES, "score_model": model.to_dict(), "tta": True}
    )


def test_a_plausible_mask_passes_with_its_estimated_dice(qc: QualityControl) -> None:
    result = qc.assess(GOOD, np.zeros(8))
    assert result.status == "pass" and result.reasons == ()
    assert result.score == pytest.approx(0.97, abs=1e-6)
    assert result.as_row() == {"qc_status": "pass", "qc_score": 0.97, "qc_reasons": ""}


def test_low_estimated_dice_goes_to_review_then_reject(qc: QualityControl) -> None:
    review = qc.assess({**GOOD, "soft_dice": 0.85}, np.zeros(8))
    assert review.status == "review" and review.reasons == ("estimated Dice 0.85 < 0.90",)
    assert qc.assess({**GOOD, "soft_dice": 0.7}, np.zeros(8)).status == "reject"


def test_one_shape_feature_out_of_range_is_review_two_are_reject(qc: QualityControl) -> None:
    one = qc.assess({**GOOD, "lung_fraction": 0.7}, np.zeros(8))
    assert one.status == "review"
    assert one.reasons == ("lung fraction 0.7 outside the training range 0.2-0.5",)
    two = qc.assess({**GOOD, "lung_fraction": 0.7, "solidity": 0.4}, np.zeros(8))
    assert two.status == "reject" and len(two.reasons) == 2


def test_an_image_far_from_the_training_features_is_rejected(qc: QualityControl) -> None:
    result = qc.assess(GOOD, np.full(8, 50.0))
    assert result.status == "reject"
    assert result.reasons[0].startswith("image unlike the training radiographs (OOD distance")


def test_no_lung_is_rejected_without_a_list_of_ranges(qc: QualityControl) -> None:
    result = qc.assess({**GOOD, "lung_fraction": 0.0, "n_regions": 0.0}, np.zeros(8))
    assert (result.status, result.reasons) == ("reject", ("no lung found",))


def test_one_lung_region_is_review(qc: QualityControl) -> None:
    result = qc.assess({**GOOD, "n_regions": 1.0}, np.zeros(8))
    assert result.status == "review" and result.reasons == ("1 lung region(s) predicted, expected 2",)


def test_missing_image_features_say_the_ood_check_is_unavailable(qc: QualityControl) -> None:
    result = qc.assess(GOOD, None)
    assert result.status == "review" and "unavailable" in result.reasons[0]


def test_severity_order_and_refusal() -> None:
    refused = QCResult.refused("image is 1x1 pixels")
    assert refused.at_least("review") and refused.at_least("reject")
    assert not QCResult("review").at_least("reject") and QCResult("review").at_least("review")
    assert not QCResult.unavailable("no calibration").at_least("review")
    assert refused.as_row() == {"qc_status": "reject", "qc_score": "", "qc_reasons": "image is 1x1 pixels"}


def test_score_model_recovers_a_linear_relation_and_clips() -> None:
    rows = [{"a": a, "b": b} for a, b in np.random.default_rng(3).uniform(size=(50, 2))]
    target = [0.5 + 0.3 * r["a"] - 0.1 * r["b"] for r in rows]
    model = ScoreModel.from_dict(ScoreModel.fit(rows, target, ["a", "b"], alpha=0.0).to_dict())
    assert model.predict({"a": 0.5, "b": 0.5}) == pytest.approx(0.6, abs=1e-6)
    assert model.predict({"a": 10.0, "b": 0.0}) == 1.0
    with pytest.raises(ValueError, match="at least 2 validation images"):
        ScoreModel.fit(rows[:1], target[:1], ["a"])


def test_review_limit_is_raised_from_out_of_fold_scores_to_catch_the_shrunk_tail() -> None:
    """The regression shrinks: a bad mask (Dice 0.86) is estimated near the good ones. Out-of-fold scores set
    the review limit so that about 4 % of the good masks go to review, and the shrunk bad mask with them."""
    from lungseg_monai.qc.calibration import out_of_fold_scores, review_limit

    rng = np.random.default_rng(0)
    dices = np.concatenate([rng.uniform(0.95, 0.98, 50), [0.86, 0.88, 0.89]])
    # one informative but noisy feature: the regression shrinks the bad masks' estimates towards the mean
    rows = [{"soft_dice": d + rng.normal(0, 0.02)} for d in dices]
    groups = [f"p{i // 2}" for i in range(len(dices))]  # two films per patient, kept in one fold
    scores = out_of_fold_scores(rows, list(dices), groups, ["soft_dice"])
    assert scores.shape == (53,) and np.all(scores[-3:] > 0.90)  # a fixed limit of 0.90 passes all three
    limit = review_limit(scores, dices)
    good_flagged = np.sum((scores < limit) & (dices >= 0.95))
    assert 0.90 < limit and good_flagged <= 0.04 * 50
    assert np.sum(scores[-3:] < limit) >= 2
    assert review_limit(scores[:5], dices[:5]) == 0.90  # too few good masks to set it: the default


def test_feature_agreement_decodes_one_encoder_pass_twice() -> None:
    """tta_method "features": one encoder pass (one bottleneck), two decodes; "input": two whole passes."""
    from lungseg_monai.inference import LungSegmenter
    from lungseg_monai.networks import LungUNet

    torch.manual_seed(0)
    card = {"image_size": 64, "intensity_percentiles": [0.5, 99.5], "intensity_mean": 0.4, "intensity_std": 0.2,
            "threshold": 0.5}
    segmenter = LungSegmenter(LungUNet("vgg16").eval(), card, precision="fp32")
    calls = []
    segmenter.network.encoder.register_forward_hook(lambda *_: calls.append("encoder"))
    batch = torch.randn(2, 1, 64, 64)
    out = segmenter.forward_qc(batch, tta=True, tta_method="features")
    assert calls == ["encoder"] and out.features.shape == (2, 512)
    assert torch.allclose(out.probabilities, segmenter.forward(batch), atol=1e-5)  # the mask is the plain pass's
    assert out.tta_probabilities.shape == (2, 1, 64, 64) and 0 < float(out.tta_valid.mean()) < 1
    assert not torch.allclose(out.tta_probabilities, out.probabilities, atol=1e-4)  # the warp changed something
    calls.clear()
    segmenter.forward_qc(batch, tta=True, tta_method="input")
    assert calls == ["encoder", "encoder"]


def test_calibration_without_tta_method_keeps_the_input_method(qc: QualityControl) -> None:
    """Cards written before the "features" method were fitted on input-perturbation tta_dice: they keep it."""
    old = qc.calibration
    assert "tta_method" not in old and qc.tta_method == "input"
    assert QualityControl({**old, "tta_method": "features"}).tta_method == "features"
    with pytest.raises(ValueError, match="unknown tta_method"):
        QualityControl({**old, "tta_method": "half"})
