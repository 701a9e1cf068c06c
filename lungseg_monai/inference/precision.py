"""Network arithmetic: fp32, or bf16/fp16 autocast on channels-last tensors, chosen for the device.

One place decides how the network runs, for ``lungseg infer`` (:class:`LungSegmenter`), the
bundle's training, evaluation and inference configs (:class:`PrecisionInferer`) and the MONAI
Label app. Whatever the precision, the network's output is returned as float32, so sigmoid,
threshold and loss are computed in fp32; BatchNorm statistics and the weights stay float32
(autocast casts the inputs of convolutions, never the parameters).

``"auto"`` resolves to ``"bf16"`` on CPUs with bf16 instructions (x86 AVX512-BF16 or AMX-BF16,
ARM BF16), ``"fp16"`` (AMP) on CUDA and ``"fp32"`` elsewhere.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from monai.inferers import Inferer

from lungseg_monai.inference.options import DEFAULT_PRECISION, PRECISIONS

__all__ = ["PRECISIONS", "Precision", "PrecisionInferer", "cpu_has_bf16", "fp32_stages", "keep_fp32", "resolve_precision"]

logger = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# torch.cpu.get_capabilities() keys that mean bf16 arithmetic in hardware (x86, then ARM64).
_CPU_BF16_CAPABILITIES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
_CPU_FP16_CAPABILITIES = ("avx512_fp16", "amx_fp16", "fp16_arith")
_CHANNELS_LAST_NDIM = 4  # (B, C, H, W): the only rank torch.channels_last applies to


def _cpu_has(capabilities: tuple[str, ...]) -> bool:
    found = torch.cpu.get_capabilities()
    return any(bool(found.get(name)) for name in capabilities)


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (``torch.cpu.get_capabilities()``)."""
    return _cpu_has(_CPU_BF16_CAPABILITIES)


@dataclass(frozen=True)
class Precision:
    """A resolved precision: how the network runs on one device type.

    Attributes:
        name: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device_type: ``"cpu"``, ``"cuda"``...
        channels_last: network and inputs in channels-last memory format (with autocast only).
    """

    name: str
    device_type: str
    channels_last: bool

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for fp32."""
        return _AUTOCAST_DTYPES.get(self.name)

    @property
    def amp(self) -> bool:
        """Whether MONAI's engines should run their CUDA AMP (fp16 autocast + gradient scaling)."""
        return self.name == "fp16" and self.device_type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` for this precision, or a no-op for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def prepare_network(self, network: torch.nn.Module) -> torch.nn.Module:
        """``network``, in place, ready for this precision (its state-dict keys unchanged).

        Channels-last memory format with autocast; and, with bf16, the stages an encoder names
        in ``full_precision_stages`` run in fp32 (:func:`keep_fp32`): for the ResNet50 encoder
        the stem and the stride-4 stage, without which bf16 masks differ from fp32 ones at the
        outline (agreement Dice 0.9970 instead of 0.9991).
        """
        if self.channels_last:
            network = network.to(memory_format=torch.channels_last)
        if self.name != "bf16":  # measured for bf16 only (fp16 keeps 3 more mantissa bits)
            return network
        if isinstance(network, torch.jit.ScriptModule):
            encoder = getattr(network, "encoder", None)
            if encoder is not None and hasattr(encoder, "layer1"):  # a ResNet encoder, whose stages would be kept
                logger.warning(
                    "bf16 with a TorchScript ResNet50-UNet: its stem and layer1 cannot be kept in fp32, so masks agree "
                    "with fp32 ones less closely (Dice about 0.997 instead of 0.999, BENCHMARKS.md); use precision "
                    "fp32, or the model.pt checkpoint, for that"
                )
            return network
        for module in list(network.modules()):
            for name in getattr(module, "full_precision_stages", ()):
                keep_fp32(module.get_submodule(name))
        kept = fp32_stages(network)
        if kept:
            logger.info("bf16: %s kept in fp32 (the encoder's high-resolution stages)", ", ".join(kept))
        return network

    def prepare_input(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) ``batch`` in the memory format the network runs in."""
        if self.channels_last and batch.ndim == _CHANNELS_LAST_NDIM:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch

    def run(self, network: Callable[..., torch.Tensor], batch: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``network(batch)`` under this precision; the output as float32, (B, 1, H, W) logits -> same shape.

        Example:
            >>> p = resolve_precision("fp32", "cpu")
            >>> p.run(torch.nn.Conv2d(1, 1, 3, padding=1), torch.zeros(2, 1, 8, 8)).shape
            torch.Size([2, 1, 8, 8])
        """
        with self.autocast():
            out = network(self.prepare_input(batch), *args, **kwargs)
        return out.float()


def _to_float(value: Any) -> Any:
    if torch.is_tensor(value) and value.is_floating_point():
        return value.float()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    return value


def _tensor_device_type(value: Any) -> str | None:
    if torch.is_tensor(value):
        return value.device.type
    if isinstance(value, (list, tuple)):
        return next((t for t in map(_tensor_device_type, value) if t is not None), None)
    return None


def _fp32_pre_hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Before the module runs: under autocast (of its input's device), turn autocast off and cast inputs to float32."""
    device_type = _tensor_device_type(args)
    switched = device_type is not None and torch.is_autocast_enabled(device_type)
    module.__dict__.setdefault("_lungseg_autocast_off", []).append(device_type if switched else None)
    if not switched:
        return None
    torch.set_autocast_enabled(device_type, False)
    return _to_float(args)


def _fp32_post_hook(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
    """After the module ran: turn autocast back on where the pre-hook turned it off."""
    stack = module.__dict__.get("_lungseg_autocast_off")
    device_type = stack.pop() if stack else None
    if device_type is not None:
        torch.set_autocast_enabled(device_type, True)


def keep_fp32(module: torch.nn.Module) -> torch.nn.Module:
    """Make ``module`` run in fp32 under autocast (autocast off inside, floating inputs cast to float32), in place.

    Done with forward hooks (module-level functions), so the module still deep-copies, pickles and
    loads its state dict as before; outside autocast it behaves as before. The device is the
    input's, at call time. Applying it twice has no further effect.
    """
    if getattr(module, "_lungseg_fp32", False):
        return module
    module.register_forward_pre_hook(_fp32_pre_hook)
    module.register_forward_hook(_fp32_post_hook)
    module._lungseg_fp32 = True
    return module


def fp32_stages(network: torch.nn.Module) -> list[str]:
    """The names of the network's modules that :func:`keep_fp32` made run in fp32 (for settings and logs)."""
    return [name for name, module in network.named_modules() if getattr(module, "_lungseg_fp32", False)]


def _device_type(device: str | torch.device | None) -> str:
    return torch.device(device).type if device is not None else "cpu"


@functools.lru_cache(maxsize=None)
def _resolve(name: str, device_type: str) -> Precision:
    if name not in PRECISIONS:
        raise ValueError(f"precision '{name}' is not one of {', '.join(PRECISIONS)}; use 'auto' to pick per device")
    resolved, reason = name, "asked for"
    if name == "auto":
        if device_type == "cuda":
            resolved, reason = "fp16", "CUDA device"
        elif device_type == "cpu" and cpu_has_bf16():
            resolved, reason = "bf16", "this CPU has bf16 instructions"
        else:
            resolved, reason = "fp32", f"no bf16 instructions on this {device_type.upper()}"
    elif device_type == "cpu" and (
        (name == "bf16" and not cpu_has_bf16()) or (name == "fp16" and not _cpu_has(_CPU_FP16_CAPABILITIES))
    ):
        logger.warning(
            "precision %s on a CPU without %s instructions is emulated and likely slower than fp32", name, name
        )
    precision = Precision(resolved, device_type, channels_last=resolved in _AUTOCAST_DTYPES)
    logger.info(
        "precision %s on %s: %s%s (%s)",
        name,
        device_type,
        resolved,
        " autocast + channels_last" if precision.channels_last else "",
        reason,
    )
    return precision


def resolve_precision(name: str | Precision = DEFAULT_PRECISION, device: str | torch.device | None = None) -> Precision:
    """The precision a name means on ``device`` (default CPU); logs the choice once per name and device type.

    Raises:
        ValueError: ``name`` is not one of :data:`PRECISIONS`.

    Example:
        >>> resolve_precision("fp32", "cpu")
        Precision(name='fp32', device_type='cpu', channels_last=False)
    """
    if isinstance(name, Precision):
        return name
    return _resolve(str(name), _device_type(device))


class PrecisionInferer(Inferer):
    """MONAI ``SimpleInferer`` under a :class:`Precision`: autocast inside, float32 logits out.

    For the bundle's ``SupervisedTrainer``/``SupervisedEvaluator``: the loss (DiceCE) and the
    post-processing then run in fp32. On CUDA with fp16, also set the engine's ``amp`` to
    ``precision.amp`` so that MONAI scales the gradients.

    Args:
        precision: a name from :data:`PRECISIONS` or a resolved :class:`Precision`.
        device: the device the engine runs on (resolves ``"auto"``).
    """

    def __init__(self, precision: str | Precision = DEFAULT_PRECISION, device: str | torch.device | None = None) -> None:
        super().__init__()
        self.precision = resolve_precision(precision, device)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """(B, C, H, W) inputs -> float32 ``network`` output."""
        return self.precision.run(network, inputs, *args, **kwargs)
