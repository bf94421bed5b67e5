"""The other ways to make a model smaller, beside distillation: one small helper per method.

Lesson 11 measures them against distillation on the course's own models, as a practitioner
deploying to a CPU would: size as saved, latency, accuracy.

- **Unstructured magnitude pruning** (Han, Pool, Tran & Dally 2015, "Learning both Weights and
  Connections for Efficient Neural Networks"): :func:`magnitude_prune` zeroes the smallest weights
  of every ``Linear`` / ``Conv2d`` with ``torch.nn.utils.prune`` (one global threshold, as in the
  comparisons of Blalock et al. 2020, "What is the State of Neural Network Pruning?"). The zeros
  are still stored and still multiplied by dense kernels: the file and the latency do not shrink
  unless the weights are compressed (:func:`saved_size_bytes` with ``compressed=True``) or run by
  a sparse kernel.
- **Structured channel pruning** (Li, Kadav, Durdanovic, Samet & Graf 2017, "Pruning Filters for
  Efficient ConvNets"): :func:`prune_channels` keeps the filters of largest L1 norm in every block
  of a :class:`~kd_ref.models.DigitsCNN` and returns a genuinely narrower network, which is then
  fine-tuned with :func:`kd_ref.train.fit` and any distiller (``Scratch`` for cross-entropy,
  ``LogitKD`` for distillation-aware fine-tuning). :func:`prune_mlp_units` does the same for a
  :class:`~kd_ref.models.CharGPT`: it keeps the MLP hidden units of largest weight norm in every
  block (its attention and width untouched).
- **Low rank** (Denton, Zaremba, Bruna, LeCun & Fergus 2014, "Exploiting Linear Structure Within
  Convolutional Networks for Efficient Evaluation"; Eckart & Young 1936 for the optimality of the
  truncated SVD): :func:`low_rank_linear` / :func:`low_rank_conv2d` replace a layer by two thinner
  ones whose product is its rank-r truncated SVD; :func:`factorize` does it for a whole model.
- **int8 quantization** is not written here: ONNX Runtime's maintained tools do it
  (``onnxruntime.quantization.quantize_dynamic`` / ``quantize_static``; Jacob et al. 2018,
  "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"
  for the affine int8 scheme). :func:`export_onnx`, :class:`OnnxModel`, :func:`quantize_dynamic_int8`
  and :func:`quantize_static_int8` only wrap the export, the runtime and those two calls.
- **Measuring**: :func:`saved_size_bytes`, :func:`median_latency`, :func:`throughput`.

Bad input (a sparsity outside [0, 1), a rank larger than the layer allows, a width or a number of
MLP units larger than the model's) raises ``ValueError`` naming the argument and the shapes. Pruning and factorising
work on the model they are given (in place) and return it; copy it first to keep the original.
The ONNX part needs the ``deploy`` extra: ``pip install -e ".[deploy]"``.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import statistics
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from .models import CharGPT, DigitsCNN

PRUNABLE = (nn.Linear, nn.Conv2d)


# -- unstructured magnitude pruning ----------------------------------------------------------------
def prunable_weights(model: nn.Module, skip: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ``Linear`` / ``Conv2d`` of ``model`` not named in ``skip``.

    A weight shared with another module (a head tied to an embedding) is left out: pruning it
    through one module would silently untie it from the other.
    """
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    found = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE) and name not in skip:
            weight = getattr(module, "weight_orig", module.weight)
            if counts.get(id(weight), 1) == 1:
                found.append((name, module))
    return found


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {name}={value!r}")


def magnitude_prune(model: nn.Module, sparsity: float, *, skip: Sequence[str] = (),
                    permanent: bool = True) -> nn.Module:
    """Zero the fraction ``sparsity`` of smallest-magnitude weights of ``model``'s Linear/Conv2d layers.

    One global threshold over all those weights (``prune.global_unstructured`` with
    ``L1Unstructured``), so ``round(sparsity * n)`` weights are zeroed exactly, n being their
    total count; biases, norms and embeddings are kept. ``permanent=False`` keeps the masks as
    ``torch.nn.utils.prune`` parametrisations (``weight = weight_orig * weight_mask``), so that
    fine-tuning keeps the pruned weights at zero; call :func:`make_pruning_permanent` afterwards.
    Works in place and returns ``model``.
    """
    _check_fraction("sparsity", sparsity)
    targets = [(module, "weight") for _, module in prunable_weights(model, skip)]
    if not targets:
        raise ValueError(f"model {type(model).__name__} has no Linear or Conv2d weight to prune")
    total = sum(module.weight.numel() for module, _ in targets)
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=round(sparsity * total))
    if permanent:
        make_pruning_permanent(model)
    return model


def make_pruning_permanent(model: nn.Module) -> nn.Module:
    """Fold every pruning mask of ``model`` into its weight (``prune.remove``): zeros become plain zeros."""
    for module in model.modules():
        if prune.is_pruned(module):
            for hook in list(module._forward_pre_hooks.values()):
                if isinstance(hook, prune.BasePruningMethod):
                    prune.remove(module, hook._tensor_name)
    return model


def weight_sparsity(model: nn.Module, skip: Sequence[str] = ()) -> float:
    """Fraction of exactly-zero entries among the weights :func:`magnitude_prune` acts on."""
    weights = [module.weight.detach() for _, module in prunable_weights(model, skip)]
    total = sum(w.numel() for w in weights)
    if total == 0:
        raise ValueError(f"model {type(model).__name__} has no Linear or Conv2d weight")
    return sum(int((w == 0).sum()) for w in weights) / total


# -- structured channel pruning -------------------------------------------------------------------
def filter_l1_norms(conv: nn.Conv2d) -> torch.Tensor:
    """``(out_channels,)``: the L1 norm of each output filter of ``conv`` (Li et al. 2017, section 3.1)."""
    return conv.weight.detach().abs().flatten(1).sum(1)


def prune_channels(model: DigitsCNN, width: int) -> DigitsCNN:
    """A new ``DigitsCNN(width)`` made of the filters of ``model`` with the largest L1 norms.

    Block k of ``model`` (``width * 2**k`` channels) keeps its ``width * 2**k`` filters of
    largest L1 norm (kept in their original order); the next convolution keeps the matching
    input channels, BatchNorm the matching statistics, and the classifier the matching columns.
    The result is a dense, narrower network (fewer parameters, fewer multiplications), meant to
    be fine-tuned: train it with :func:`kd_ref.train.fit` and ``Scratch`` (cross-entropy) or
    ``LogitKD`` with the unpruned model as teacher (distillation-aware pruning).
    """
    if not isinstance(model, DigitsCNN):
        raise ValueError(f"prune_channels rebuilds a DigitsCNN, got model {type(model).__name__}")
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= model.width:
        raise ValueError(f"width must be an integer in [1, {model.width}] (the model's width), got width={width!r}")
    small = DigitsCNN(width, num_classes=model.classifier.out_features)
    keep_in = torch.arange(1)                                                       # the one input channel
    with torch.no_grad():
        for name in ("block1", "block2", "block3"):
            old, new = getattr(model, name), getattr(small, name)
            keep = filter_l1_norms(old.conv).topk(new.conv.out_channels).indices.sort().values   # (c_out_new,)
            new.conv.weight.copy_(old.conv.weight[keep][:, keep_in])                # (c_out_new, c_in_new, 3, 3)
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(new.bn, attr).copy_(getattr(old.bn, attr)[keep])
            new.bn.num_batches_tracked.copy_(old.bn.num_batches_tracked)
            keep_in = keep
        small.classifier.weight.copy_(model.classifier.weight[:, keep_in])           # (10, 4 * width)
        small.classifier.bias.copy_(model.classifier.bias)
    return small.train(model.training)


def mlp_unit_norms(block: nn.Module) -> torch.Tensor:
    """``(hidden,)``: for each hidden unit of a transformer block's MLP, the L2 norm of its weights in and out.

    Unit j of ``mlp = Sequential(Linear(C, H), GELU, Linear(H, C), ...)`` reads row j of the
    first weight and writes column j of the second: its score is
    ``sqrt(‖W_in[j, :]‖² + ‖W_out[:, j]‖²)`` (biases not counted).
    """
    w_in, w_out = block.mlp[0].weight.detach(), block.mlp[2].weight.detach()   # (H, C), (C, H)
    return (w_in.square().sum(1) + w_out.square().sum(0)).sqrt()


def prune_mlp_units(model: CharGPT, hidden: int) -> CharGPT:
    """Keep the ``hidden`` MLP units of largest :func:`mlp_unit_norms` in every block of a CharGPT, in place.

    Each block's ``Linear(C, H)`` / ``Linear(H, C)`` pair becomes ``Linear(C, hidden)`` /
    ``Linear(hidden, C)`` holding the kept rows / columns (kept in their original order) and
    the first layer's matching biases; the second bias is kept whole. The GELU acts unit by
    unit, so the pruned model computes exactly what the original computes with the removed
    units' outputs set to zero: a dense, narrower network (structured pruning, Li et al.
    2017's idea applied to a transformer's MLP), meant to be fine-tuned. Works in place
    (copy the model first to keep it) and returns ``model``.
    """
    if not isinstance(model, CharGPT):
        raise ValueError(f"prune_mlp_units prunes a CharGPT's MLP units, got model {type(model).__name__}")
    for i, block in enumerate(model.blocks):
        if not (isinstance(block.mlp[0], nn.Linear) and isinstance(block.mlp[2], nn.Linear)):
            raise ValueError(f"blocks.{i}.mlp must hold nn.Linear layers at 0 and 2 (prune before factorising), "
                             f"got {type(block.mlp[0]).__name__} and {type(block.mlp[2]).__name__}")
    current = min(block.mlp[0].out_features for block in model.blocks)
    if isinstance(hidden, bool) or not isinstance(hidden, int) or not 1 <= hidden <= current:
        shapes = [tuple(block.mlp[0].weight.shape) for block in model.blocks]
        raise ValueError(f"hidden must be an integer in [1, {current}] (the MLP widths, first weights of shapes "
                         f"{shapes}), got hidden={hidden!r}")
    with torch.no_grad():
        for block in model.blocks:
            first, second = block.mlp[0], block.mlp[2]
            keep = mlp_unit_norms(block).topk(hidden).indices.sort().values            # (hidden,)
            like = dict(dtype=first.weight.dtype, device=first.weight.device)
            new_first = nn.Linear(first.in_features, hidden, bias=first.bias is not None, **like)
            new_second = nn.Linear(hidden, second.out_features, bias=second.bias is not None, **like)
            new_first.weight.copy_(first.weight[keep])                                 # (hidden, C)
            new_second.weight.copy_(second.weight[:, keep])                            # (C, hidden)
            if first.bias is not None:
                new_first.bias.copy_(first.bias[keep])
            if second.bias is not None:
                new_second.bias.copy_(second.bias)
            for new, old in ((new_first, first), (new_second, second)):     # frozen stays frozen
                for name, param in new.named_parameters():
                    param.requires_grad_(getattr(old, name).requires_grad)
            block.mlp[0], block.mlp[2] = new_first, new_second
    return model


# -- low rank ----------------------------------------------------------------------------------------
def max_rank(layer: nn.Module) -> int:
    """The largest rank of ``layer``'s weight as a matrix: ``min(out, in)``, ``in`` = ``in_channels * kh * kw`` for a conv."""
    if isinstance(layer, nn.Linear):
        return min(layer.out_features, layer.in_features)
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError(f"grouped convolutions are not factorised here, got groups={layer.groups}")
        return min(layer.out_channels, layer.weight[0].numel())
    raise ValueError(f"layer must be nn.Linear or nn.Conv2d, got {type(layer).__name__}")


def _check_rank(layer: nn.Module, rank: int) -> None:
    largest = max_rank(layer)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= largest:
        raise ValueError(f"rank must be an integer in [1, {largest}] for a weight of shape "
                         f"{tuple(layer.weight.shape)}, got rank={rank!r}")


def _truncated_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A, B, s)`` with ``B @ A`` the rank-``rank`` truncated SVD of ``matrix`` (out, in): A (r, in), B (out, r).

    The singular values are split evenly, ``A = sqrt(S_r) V_rᵀ``, ``B = U_r sqrt(S_r)``, so both
    factors have the same scale. ``s`` are all the singular values (float64), largest first.
    """
    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)    # (out, k), (k,), (k, in)
    root = s[:rank].sqrt()
    a = (root[:, None] * vh[:rank]).to(matrix.dtype)                              # (r, in)
    b = (u[:, :rank] * root[None, :]).to(matrix.dtype)                            # (out, r)
    return a, b, s


def low_rank_linear(linear: nn.Linear, rank: int) -> nn.Sequential:
    """``Linear(in, out)`` -> ``Sequential(Linear(in, rank, bias=False), Linear(rank, out))``, the rank-``rank`` truncated SVD.

    Parameters go from ``out * in`` (+ ``out`` bias) to ``rank * (in + out)`` (+ ``out``).
    The weight error ``‖W - W_r‖_F`` is ``sqrt(sum of the discarded σ_i²)``, the smallest any
    rank-r matrix can reach (Eckart & Young 1936).
    """
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"linear must be nn.Linear, got {type(linear).__name__}")
    _check_rank(linear, rank)
    a, b, _ = _truncated_factors(linear.weight, rank)
    like = dict(dtype=linear.weight.dtype, device=linear.weight.device)
    first = nn.Linear(linear.in_features, rank, bias=False, **like)
    second = nn.Linear(rank, linear.out_features, bias=linear.bias is not None, **like)
    with torch.no_grad():
        first.weight.copy_(a)
        second.weight.copy_(b)
        if linear.bias is not None:
            second.bias.copy_(linear.bias)
    return nn.Sequential(first, second)


def low_rank_conv2d(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """``Conv2d(c_in, c_out, k)`` -> ``Conv2d(c_in, rank, k)`` then a 1x1 ``Conv2d(rank, c_out)``.

    The weight ``(c_out, c_in, kh, kw)`` is read as a ``(c_out, c_in·kh·kw)`` matrix and
    truncated to rank ``rank`` (Denton et al. 2014's output-channel factorisation); the first
    convolution keeps the stride, padding and dilation, the 1x1 one carries the bias.
    """
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"conv must be nn.Conv2d, got {type(conv).__name__}")
    _check_rank(conv, rank)
    c_out, c_in, kh, kw = conv.weight.shape
    a, b, _ = _truncated_factors(conv.weight.reshape(c_out, -1), rank)          # (r, c_in·kh·kw), (c_out, r)
    like = dict(dtype=conv.weight.dtype, device=conv.weight.device)
    first = nn.Conv2d(c_in, rank, (kh, kw), stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                      bias=False, padding_mode=conv.padding_mode, **like)
    second = nn.Conv2d(rank, c_out, 1, bias=conv.bias is not None, **like)
    with torch.no_grad():
        first.weight.copy_(a.reshape(rank, c_in, kh, kw))
        second.weight.copy_(b.reshape(c_out, rank, 1, 1))
        if conv.bias is not None:
            second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def low_rank_error(layer: nn.Module, rank: int) -> float:
    """``‖W - W_r‖_F / ‖W‖_F``: the relative Frobenius error of ``layer``'s rank-``rank`` truncation."""
    _check_rank(layer, rank)
    s = torch.linalg.svdvals(layer.weight.detach().double().reshape(layer.weight.shape[0], -1))
    return float(s[rank:].square().sum().sqrt() / s.square().sum().sqrt())


def factorize(model: nn.Module, rank_fraction: float, *, skip: Sequence[str] = ()) -> list[dict]:
    """Replace each Linear / Conv2d of ``model`` (not in ``skip``) by its truncated SVD, in place.

    Layer by layer, ``rank = max(1, ceil(rank_fraction * max_rank(layer)))``; a layer is replaced
    only when the two factors have fewer parameters than the layer. Returns one dict per layer
    looked at: ``name``, ``shape``, ``rank`` (None when kept), ``params_before``, ``params_after``
    (weights only) and ``relative_error`` (``‖W - W_r‖_F / ‖W‖_F``, 0 when kept).
    """
    if isinstance(rank_fraction, bool) or not isinstance(rank_fraction, (int, float)) or not 0 < rank_fraction <= 1:
        raise ValueError(f"rank_fraction must be in (0, 1], got rank_fraction={rank_fraction!r}")
    report = []
    for name, module in prunable_weights(model, skip):
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            continue
        out_dim, in_dim = module.weight.shape[0], module.weight[0].numel()
        rank = max(1, math.ceil(rank_fraction * max_rank(module)))
        before, after = out_dim * in_dim, rank * (out_dim + in_dim)
        row = {"name": name, "shape": tuple(module.weight.shape), "params_before": before}
        if after >= before:
            report.append({**row, "rank": None, "params_after": before, "relative_error": 0.0})
            continue
        report.append({**row, "rank": rank, "params_after": after, "relative_error": low_rank_error(module, rank)})
        factor = low_rank_linear if isinstance(module, nn.Linear) else low_rank_conv2d
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, factor(module, rank))
    return report


# -- measuring -------------------------------------------------------------------------------------
def saved_size_bytes(model: nn.Module | str | os.PathLike, *, compressed: bool = False) -> int:
    """Bytes of ``model`` as saved: ``torch.save(state_dict)``, or the size of the file at a path.

    ``compressed=True``: the bytes after ``zlib`` (level 9), what zeros of unstructured pruning
    buy on disk (a dense file stores a zero in as many bytes as any other float).
    """
    if isinstance(model, (str, os.PathLike)):
        data = Path(model).read_bytes()
    else:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        data = buffer.getvalue()
    return len(zlib.compress(data, 9)) if compressed else len(data)


def median_latency(fn: Callable, example, *, repeats: int = 100, warmup: int = 10) -> float:
    """Median wall time in seconds of ``fn(example)`` over ``repeats`` calls, after ``warmup`` calls.

    The median, not the mean: on a shared machine a few calls are slowed by other jobs. Torch
    calls run under ``torch.inference_mode()``; set the number of threads before measuring.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            fn(example)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput(fn: Callable, batch, *, repeats: int = 10, warmup: int = 2) -> float:
    """Examples per second of ``fn(batch)``: ``len(batch)`` over the median time of one call."""
    return len(batch) / median_latency(fn, batch, repeats=repeats, warmup=warmup)


# -- ONNX export, ONNX Runtime, int8 -----------------------------------------------------------------
def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, *, input_name: str = "input",
                dynamo: bool = False, opset: int = 17) -> Path:
    """Export ``model`` (eval mode) to ONNX at ``path``, batch dimension dynamic; returns the path.

    ``dynamo=False`` uses torch's TorchScript-based exporter (deprecated since torch 2.9 but
    kept, and about 20x faster to export these small models here); ``dynamo=True`` the
    ``torch.export``-based default (needs ``onnxscript``). The output is named ``output``.
    """
    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if dynamo:
                program = torch.onnx.export(model, (example,), dynamo=True, input_names=[input_name],
                                            output_names=["output"],
                                            dynamic_shapes=({0: torch.export.Dim("batch")},))
                program.save(str(path))
            else:
                torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=[input_name],
                                  output_names=["output"], dynamic_axes={input_name: {0: "batch"}},
                                  opset_version=opset)
    finally:
        model.train(was_training)
    return path


class OnnxModel:
    """An ONNX file run by ONNX Runtime on the CPU: ``model(x)`` with a NumPy array or a tensor -> NumPy array.

    ``threads`` sets both of ONNX Runtime's thread pools (1: comparable with
    ``torch.set_num_threads(1)``).
    """

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
        options.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        return self.session.run(None, {self.input_name: x})[0]


@contextlib.contextmanager
def _quiet_onnxruntime():
    """ONNX Runtime's quantization tools log through the root logger: silence them for the call only."""
    import logging
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _preprocessed(src: Path) -> Path:
    """ONNX Runtime's recommended pre-processing (shape inference, graph optimisation) before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process
    out = src.with_name(src.stem + ".pre.onnx")
    with _quiet_onnxruntime():
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    return out


def quantize_dynamic_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """int8 weights, activations quantized on the fly per call (``onnxruntime.quantization.quantize_dynamic``).

    Weights are signed int8 (``QInt8``); each activation's scale comes from its range at run
    time, so no calibration data is needed. Returns ``dst``.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    pre = _preprocessed(Path(src))
    with _quiet_onnxruntime():
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)
    pre.unlink()
    return Path(dst)


def quantize_static_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: Iterable) -> Path:
    """int8 weights and activations, the activations' scales fixed from ``calibration`` (``quantize_static``).

    ``calibration`` yields input batches (tensors or arrays) from the *training* split; their
    activation ranges (min / max) set every scale once. QDQ format, signed int8 weights and
    activations, per-tensor scales. Returns ``dst``.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    pre = _preprocessed(Path(src))
    name = ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    feeds = [{name: (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))}
             for x in calibration]
    if not feeds:
        raise ValueError("calibration must yield at least one input batch, got none")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    with _quiet_onnxruntime():
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    pre.unlink()
    return Path(dst)
