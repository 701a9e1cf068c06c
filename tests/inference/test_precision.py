"""Network precision: how names resolve per device, what runs in bf16, what stays fp32.

The network here is an untrained LungUNet on small synthetic inputs (shapes and dtypes only);
agreement of bf16 with fp32 masks on real radiographs is measured by scripts/precision_check.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from monai.losses import DiceCELoss

from lungseg_monai.inference import LungSegmenter, PrecisionInferer, resolve_precision
from lungseg_monai.inference import precision as precision_module
from lungseg_monai.networks import LungUNet

SIZE = 64


@pytest.fixture
def cpu_bf16(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """Pretend the CPU has (param True) or lacks (False) bf16 instructions; resolution cache cleared."""
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: request.param)
    precision_module._resolve.cache_clear()
    yield request.param
    precision_module._resolve.cache_clear()


@pytest.fixture(scope="module")
def network() -> LungUNet:
    torch.manual_seed(0)
    return LungUNet(backbone="resnet50")


@pytest.mark.parametrize(("cpu_bf16", "expected"), [(True, "bf16"), (False, "fp32")], indirect=["cpu_bf16"])
def test_auto_on_cpu_is_bf16_only_with_bf16_instructions(cpu_bf16: bool, expected: str) -> None:
    precision = resolve_precision("auto", "cpu")
    assert (precision.name, precision.channels_last, precision.amp) == (expected, cpu_bf16, False)
    assert precision.dtype == (torch.bfloat16 if cpu_bf16 else None)


def test_auto_on_cuda_is_fp16_amp_whatever_the_cpu() -> None:
    precision = resolve_precision("auto", "cuda:1")
    assert (precision.name, precision.device_type, precision.channels_last, precision.amp) == ("fp16", "cuda", True, True)
    assert resolve_precision("bf16", "cuda").amp is False  # bf16 needs no gradient scaling


def test_explicit_fp32_is_plain_and_unknown_names_are_refused_with_the_choices() -> None:
    assert resolve_precision("fp32", "cpu") == precision_module.Precision("fp32", "cpu", channels_last=False)
    with pytest.raises(ValueError, match=r"^precision 'float16' is not one of auto, fp32, bf16, fp16; use 'auto'"):
        resolve_precision("float16", "cpu")


def test_cpu_bf16_detection_reads_torch_capabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False, "amx_bf16": True})
    assert precision_module.cpu_has_bf16() is True
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False})
    assert precision_module.cpu_has_bf16() is False


def test_bf16_runs_convolutions_in_bf16_and_returns_float32(network: LungUNet) -> None:
    seen: list[torch.dtype] = []
    handle = network.encoder.conv1.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    try:
        with torch.inference_mode():
            out = resolve_precision("bf16", "cpu").run(network.eval(), torch.randn(2, 1, SIZE, SIZE))
    finally:
        handle.remove()
    assert seen == [torch.bfloat16]
    assert out.dtype == torch.float32 and out.shape == (2, 1, SIZE, SIZE)


def test_bf16_keeps_the_encoders_high_resolution_stages_in_fp32() -> None:
    """The stem and layer1 of the ResNet50 encoder run in fp32 under bf16; the rest in bf16."""
    import copy
    import pickle

    torch.manual_seed(0)
    network = LungUNet(backbone="resnet50")
    plain_keys = set(network.state_dict())
    precision = resolve_precision("bf16", "cpu")
    precision.prepare_network(network)
    precision.prepare_network(network)  # twice: no double wrapping
    watched = {"conv1": network.encoder.conv1, "layer1": network.encoder.layer1, "layer2": network.encoder.layer2,
               "layer4": network.encoder.layer4}  # fmt: skip
    seen: dict[str, torch.dtype] = {}
    handles = [m.register_forward_hook(lambda m, i, out, n=n: seen.__setitem__(n, out.dtype)) for n, m in watched.items()]
    x = torch.randn(2, 1, SIZE, SIZE)
    try:
        with torch.inference_mode():
            out = precision.run(network.eval(), x)
    finally:
        for handle in handles:
            handle.remove()
    with torch.inference_mode():
        plain = network(x)  # outside autocast the network is what it was
    assert seen == {"conv1": torch.float32, "layer1": torch.float32, "layer2": torch.bfloat16, "layer4": torch.bfloat16}
    assert out.dtype == torch.float32 and plain.dtype == torch.float32
    assert set(network.state_dict()) == plain_keys
    fresh = LungUNet(backbone="resnet50")
    fresh.load_state_dict(network.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(fresh.eval()(x), plain)
    assert precision_module.fp32_stages(network) == ["encoder.conv1", "encoder.bn1", "encoder.layer1"]
    assert precision_module.fp32_stages(resolve_precision("fp32", "cpu").prepare_network(LungUNet(backbone="resnet50"))) == []
    # A copy is a network of its own (its weights, its fp32 stages), and the network still pickles.
    twin = copy.deepcopy(network)
    with torch.no_grad():
        for parameter in twin.parameters():
            parameter.zero_()
    with torch.inference_mode():
        assert not torch.equal(precision.run(twin, x), out)
        torch.testing.assert_close(precision.run(network, x), out)
    assert precision_module.fp32_stages(pickle.loads(pickle.dumps(network))) == precision_module.fp32_stages(network)
    assert not torch.is_autocast_enabled("cpu")  # the hooks left autocast as they found it


def test_segmenter_records_the_resolved_precision_and_thresholds_fp32_probabilities(network: LungUNet) -> None:
    card = {"image_size": SIZE, "intensity_percentiles": [0.5, 99.5], "intensity_mean": 0.449,
            "intensity_std": 0.226, "threshold": 0.5}  # fmt: skip
    segmenter = LungSegmenter(network, card, "cpu", precision="bf16")
    probabilities = segmenter.forward(torch.randn(2, 1, SIZE, SIZE))
    assert segmenter.settings()["precision"] == "bf16"
    assert probabilities.dtype == torch.float32 and float(probabilities.min()) >= 0.0 and float(probabilities.max()) <= 1.0
    assert segmenter.channels_last
    assert network.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    fp32 = LungSegmenter(LungUNet(backbone="resnet50"), card, "cpu", precision="fp32")
    assert fp32.settings()["precision"] == "fp32" and not fp32.channels_last


def test_bf16_training_step_keeps_loss_weights_and_batchnorm_statistics_float32() -> None:
    torch.manual_seed(0)
    network = LungUNet(backbone="resnet50")
    precision = resolve_precision("bf16", "cpu")
    precision.prepare_network(network).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    bn = network.encoder.bn1
    before = bn.running_mean.clone()
    inputs, labels = torch.randn(2, 1, SIZE, SIZE), (torch.rand(2, 1, SIZE, SIZE) > 0.5).float()
    pred = PrecisionInferer(precision)(inputs, network)
    loss = DiceCELoss(sigmoid=True)(pred, labels)
    loss.backward()
    optimizer.step()
    assert (pred.dtype, loss.dtype) == (torch.float32, torch.float32)
    assert (bn.running_mean.dtype, bn.running_var.dtype, bn.weight.dtype) == (torch.float32,) * 3
    assert not torch.equal(bn.running_mean, before)  # the statistics were updated, in fp32
    assert {p.dtype for p in network.parameters()} == {torch.float32}
    assert {p.grad.dtype for p in network.parameters() if p.grad is not None} == {torch.float32}
    # channels-last changes strides only: the state dict loads strictly into a plain LungUNet.
    plain = LungUNet(backbone="resnet50")
    plain.load_state_dict(network.state_dict())
    assert set(plain.state_dict()) == set(network.state_dict())
    assert torch.equal(plain.encoder.conv1.weight, network.encoder.conv1.weight)
