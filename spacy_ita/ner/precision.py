"""The numeric precision of ita_ner's encoder: bf16 autocast or fp32.

bf16 autocast runs the transformer's matrix products in bfloat16, about 2-3x
faster where the hardware has bf16 instructions (and far slower where it only
emulates them). Only the encoder is autocast: its output goes back to fp32
before the token features, the emission layer, the CRF and the losses, and the
weights stay fp32, so saved pipelines are the same in either precision.

The component's setting reaches the torch module through `encoder_precision`,
a context the component opens around its model calls: a model called outside
it runs in fp32.
"""
import logging
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, Optional, Set, Tuple

import torch
from torch import nn

PRECISIONS = ("auto", "bf16", "fp32")
# CPU flags of native bf16 arithmetic: x86 (AVX-512 BF16, AMX) and ARM (BF16).
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})

logger = logging.getLogger(__name__)
_precision: ContextVar[str] = ContextVar("ita_encoder_precision", default="fp32")
_announced: Set[Tuple[str, str]] = set()


def check_precision(value: str, owner: str = "ita_ner") -> str:
    """The value, if it names a precision; else a ValueError saying what is allowed."""
    if value not in PRECISIONS:
        raise ValueError(f"Unknown {owner} precision {value!r}; expected one of {PRECISIONS}")
    return value


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return frozenset()
    flags = set()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes in bf16 natively rather than by emulation:
    a CPU with bf16 instructions, a CUDA GPU with bf16 units."""
    if device.type == "cpu":
        return bool(_cpu_flags() & CPU_BF16_FLAGS)
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.4 counts only native support anyway
            return torch.cuda.is_bf16_supported()
    return False


def effective_precision(precision: str, device: torch.device) -> str:
    """"bf16" or "fp32": what `precision` means on the device. "auto" is bf16
    where it is native; the first time a choice is made on a device type, the
    log says which (and warns when bf16 is forced on a device that emulates it)."""
    check_precision(precision)
    native = native_bf16(device)
    effective = "bf16" if precision == "bf16" or (precision == "auto" and native) else "fp32"
    if (precision, device.type) not in _announced:
        _announced.add((precision, device.type))
        nativeness = "native" if native else "not native"
        if precision == "bf16" and not native:
            logger.warning("ita_ner: bf16 is %s on %s: the encoder will run slower than in "
                           "fp32 (precision 'auto' chooses for you)", nativeness, device.type)
        else:
            logger.info("ita_ner: precision %r on %s (bf16 %s): the encoder runs in %s",
                        precision, device.type, nativeness, effective)
    return effective


@contextmanager
def encoder_precision(precision: str) -> Iterator[None]:
    """Within this context, ita_ner's encoder runs in `precision`."""
    token = _precision.set(check_precision(precision))
    try:
        yield
    finally:
        _precision.reset(token)


def encoder_in_bf16(device: torch.device) -> bool:
    """Whether the current `encoder_precision` runs the encoder in bf16 on the device."""
    return effective_precision(_precision.get(), device) == "bf16"


@lru_cache(maxsize=1)
def onednn_packing() -> bool:
    """Whether this torch multiplies by linear weights prepacked for oneDNN
    (the CPU ops torch.compile's inductor uses; private, so tried once on a
    product of MiniLM's width and compared with `nn.functional.linear`, bit
    for bit). Its numbers come from a generator of its own: drawing from
    torch's would change the dropout masks of a resumed training run."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    rows, weight, bias = (torch.randn(shape, generator=generator, device="cpu")
                          .to(torch.bfloat16) for shape in ((3, 4, 384), (64, 384), (64,)))
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        product = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")
        return torch.equal(product, nn.functional.linear(rows, weight, bias))
    except (AttributeError, RuntimeError):  # no such op, or no bf16 oneDNN on this CPU
        return False


class Bf16Linear:
    """A linear layer's weight and bias in bf16, as autocast would cast them.
    On a CPU where oneDNN takes it, the weight is also prepacked into the
    layout its matmul otherwise reorders the weight into on every call (about
    5 % of a batch's time on all-MiniLM-L6-v2 here), for the inputs whose
    products then equal autocast's (`reads`)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        self.bias = None if bias is None else bias.to(torch.bfloat16)
        self.weight = weight.to(torch.bfloat16)
        self.packed = weight.device.type == "cpu" and onednn_packing()
        if self.packed:
            self.weight = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)

    def reads(self, input: torch.Tensor) -> bool:
        """Whether the product of `input` is autocast's to the bit: always
        unpacked; packed, for contiguous fp32 or bf16 rows while oneDNN is on
        (a strided input of 3 dimensions or more with a bias is rounded once
        where autocast rounds twice; oneDNN switched off changes autocast's kernel)."""
        return not self.packed or (input.is_contiguous() and torch.backends.mkldnn.enabled
                                   and input.dtype in (torch.float32, torch.bfloat16))

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        if not self.packed:
            return nn.functional.linear(input, self.weight, self.bias)
        # autocast does not know this op: the input is cast as autocast casts it.
        rows = input.to(torch.bfloat16)
        return torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, "none", [], "")


# The kept bf16 weights the encoder's linear layers use in this thread's (or
# task's) current forward, by id(layer); None: their own fp32 weights.
_kept_copies: ContextVar[Optional[Dict[int, Bf16Linear]]] = ContextVar(
    "ita_kept_bf16_weights", default=None)


class KeptWeightsLinear(nn.Linear):
    """An nn.Linear (same parameters, same state dict) that multiplies by its
    kept bf16 copies inside `Bf16LinearWeights.used`, and only in the thread
    that entered it: other threads, training and saving see the fp32 weights."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        kept = _kept_copies.get()
        copy = None if kept is None else kept.get(id(self))
        if copy is None or not copy.reads(input):
            return super().forward(input)  # autocast casts the fp32 weights
        return copy(input)


class Bf16LinearWeights:
    """bf16 copies of a module's linear layers' weights and biases, for
    inference under bf16 autocast: autocast casts every linear weight again on
    each forward (about 10 ms of a 47 ms batch of 8 posts on all-MiniLM-L6-v2
    here). Multiplying by the copies gives the products autocast's casts give,
    so the outputs are the same; they are made again after `forget` (the tagger calls it
    after each optimizer step: thinc's steps change the weights in place
    through numpy, unseen by torch) or once torch sees a weight change (an
    in-place update of its own, a load, a move to another device)."""

    def __init__(self, module: nn.Module):
        self.layers = [layer for layer in module.modules() if type(layer) is nn.Linear]
        for layer in self.layers:
            layer.__class__ = KeptWeightsLinear
        self.forget()
        self._lock = threading.Lock()  # one thread makes the copies, the others wait for them

    def forget(self) -> None:
        """Drop the copies: the next use makes them again."""
        self._key: Optional[Tuple] = None
        self._copies: Optional[Dict[int, Bf16Linear]] = None

    def __getstate__(self) -> Dict:
        """A copy or a pickle (thinc copies the module) keeps no copies nor the lock."""
        return {"layers": self.layers}

    def __setstate__(self, state: Dict) -> None:
        self.layers = state["layers"]
        self.forget()
        self._lock = threading.Lock()

    @contextmanager
    def used(self) -> Iterator[None]:
        """Within this context, in this thread, the linear layers multiply by
        their bf16 copies (made first if a weight changed since the last)."""
        token = _kept_copies.set(self._current_copies())
        try:
            yield
        finally:
            _kept_copies.reset(token)

    def _current_copies(self) -> Optional[Dict[int, Bf16Linear]]:
        """The copies of the weights as they are now; None for weights made
        under `torch.inference_mode`, which have no version to tell a change by
        (autocast then casts them on each forward)."""
        tensors = [t for layer in self.layers for t in (layer.weight, layer.bias)
                   if t is not None]
        if any(t.is_inference() for t in tensors):
            return None
        key = tuple((id(t), t._version, t.data_ptr()) for t in tensors)
        with self._lock:
            if key != self._key:
                with torch.no_grad():
                    self._copies = {id(layer): Bf16Linear(layer.weight, layer.bias)
                                    for layer in self.layers}
                self._key = key
            return self._copies
