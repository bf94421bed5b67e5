"""kd_ref.compress against independent computations: NumPy SVD, closed-form counts, exact fractions, ONNX Runtime."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd_ref import compress
from kd_ref.models import CharGPT, DigitsCNN, DigitsMLP, GPTConfig, count_parameters


def _mlp(seed=0, hidden=16):
    torch.manual_seed(seed)
    return DigitsMLP(hidden)


# -- unstructured magnitude pruning ----------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9])
def test_magnitude_prune_zeroes_exactly_the_smallest_weights(sparsity):
    model = _mlp()
    layers = [model.layer1[1], model.embedding[0], model.classifier]
    before = np.concatenate([l.weight.detach().numpy().ravel() for l in layers])      # (N,)
    biases = [l.bias.detach().clone() for l in layers]
    compress.magnitude_prune(model, sparsity)
    after = np.concatenate([l.weight.detach().numpy().ravel() for l in layers])
    k = round(sparsity * before.size)
    smallest = np.argsort(np.abs(before), kind="stable")[:k]                         # NumPy's choice
    expected = before.copy()
    expected[smallest] = 0.0
    assert (after == 0).sum() == k                                                   # exact count
    np.testing.assert_array_equal(after, expected)                                   # the same weights
    assert compress.weight_sparsity(model) == k / before.size
    for layer, bias in zip(layers, biases):
        assert torch.equal(layer.bias, bias)                                         # biases untouched
        assert not hasattr(layer, "weight_orig")                                     # permanent by default


def test_pruning_masks_survive_fine_tuning_until_made_permanent():
    model = _mlp(1)
    compress.magnitude_prune(model, 0.5, permanent=False)
    assert hasattr(model.classifier, "weight_orig") and hasattr(model.classifier, "weight_mask")
    mask = model.classifier.weight_mask.clone()
    loss = F.cross_entropy(model(torch.randn(8, 1, 8, 8)), torch.arange(8))
    loss.backward()
    with torch.no_grad():                                                            # one plain SGD step
        for p in model.parameters():
            p -= 0.1 * p.grad
    assert torch.all(model.classifier.weight[mask == 0] == 0)
    compress.make_pruning_permanent(model)
    assert not hasattr(model.classifier, "weight_orig")
    assert isinstance(model.classifier.weight, nn.Parameter)
    assert torch.all(model.classifier.weight[mask == 0] == 0)


def test_tied_weights_are_not_pruned():
    torch.manual_seed(0)
    gpt = CharGPT(GPTConfig(vocab_size=11, context=8, n_layer=1, n_head=2, width=8, tie_weights=True))
    names = [name for name, _ in compress.prunable_weights(gpt)]
    assert "head" not in names and "blocks.0.attn.qkv" in names


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), True, "0.5"])
def test_bad_sparsity_is_refused(bad):
    with pytest.raises(ValueError, match="sparsity"):
        compress.magnitude_prune(_mlp(), bad)


# -- structured channel pruning -------------------------------------------------------------------
@pytest.mark.parametrize("width", [1, 3, 8])
def test_prune_channels_gives_the_closed_form_parameter_count(width):
    torch.manual_seed(0)
    small = compress.prune_channels(DigitsCNN(8), width)
    assert isinstance(small, DigitsCNN) and small.width == width
    assert count_parameters(small) == 90 * width ** 2 + 63 * width + 10             # DigitsCNN's closed form


def test_prune_channels_keeps_the_largest_l1_filters_and_dead_channels_cost_nothing():
    torch.manual_seed(0)
    model = DigitsCNN(4).eval()
    keep = {}
    with torch.no_grad():
        for name in ("block1", "block2", "block3"):
            block = getattr(model, name)
            c_out = block.conv.out_channels
            drop = torch.arange(c_out)[torch.randperm(c_out)[: c_out // 2]]
            block.conv.weight[drop] *= 1e-3                                       # small filters ...
            block.bn.weight[drop] = 0.0                                            # ... whose channel is 0
            block.bn.bias[drop] = 0.0
            norms = np.abs(block.conv.weight.numpy()).reshape(c_out, -1).sum(1)   # NumPy's L1 norms
            keep[name] = np.sort(np.argsort(-norms)[: c_out // 2])
            block.bn.running_mean.uniform_(-0.5, 0.5)
            block.bn.running_var.uniform_(0.5, 2.0)
    small = compress.prune_channels(model, 2).eval()
    np.testing.assert_array_equal(np.sort(compress.filter_l1_norms(model.block2.conv).topk(4).indices.numpy()),
                                  keep["block2"])
    np.testing.assert_allclose(small.block3.conv.weight.detach().numpy(),
                               model.block3.conv.weight.detach().numpy()[keep["block3"]][:, keep["block2"]])
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(small(x).numpy(), model(x).numpy(), rtol=0, atol=1e-6)   # removed channels were 0


@pytest.mark.parametrize("bad", [0, 5, 2.0, True])
def test_bad_width_is_refused(bad):
    with pytest.raises(ValueError, match=r"width .*\[1, 4\]"):
        compress.prune_channels(DigitsCNN(4), bad)
    with pytest.raises(ValueError, match="DigitsCNN"):
        compress.prune_channels(_mlp(), 2)


def _gpt(seed=0, **sizes):
    torch.manual_seed(seed)
    config = dict(vocab_size=11, context=8, n_layer=2, n_head=2, width=8)
    config.update(sizes)
    return CharGPT(GPTConfig(**config)).eval()


def test_prune_mlp_units_equals_zeroing_the_dropped_units():
    gpt = _gpt()
    with torch.no_grad():                                   # spread the units' norms (the init makes them alike)
        for block in gpt.blocks:
            block.mlp[0].weight.mul_(torch.rand(32, 1) * 2)
            block.mlp[0].bias.normal_(0, 0.1)
    idx = torch.randint(0, 11, (3, 8))
    keep = {}
    for i, block in enumerate(gpt.blocks):                  # NumPy's choice: the 12 largest sqrt(|row|^2 + |col|^2)
        w_in, w_out = block.mlp[0].weight.detach().numpy(), block.mlp[2].weight.detach().numpy()   # (32, 8), (8, 32)
        norms = np.sqrt((w_in ** 2).sum(1) + (w_out ** 2).sum(0))
        keep[i] = np.sort(np.argsort(-norms, kind="stable")[:12])
        np.testing.assert_allclose(compress.mlp_unit_norms(block).numpy(), norms, rtol=1e-6)

    def zero_dropped(i):
        dropped = torch.ones(32, dtype=torch.bool)
        dropped[torch.from_numpy(keep[i])] = False

        def hook(module, args, output):                     # the GELU's output, (B, T, 32)
            return output.masked_fill(dropped, 0.0)
        return hook

    handles = [block.mlp[1].register_forward_hook(zero_dropped(i)) for i, block in enumerate(gpt.blocks)]
    with torch.no_grad():
        expected = gpt(idx).numpy()                         # the original with the dropped units' outputs zeroed
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        original = gpt(idx).numpy()
    pruned = compress.prune_mlp_units(gpt, 12)
    assert pruned is gpt
    with torch.no_grad():
        np.testing.assert_allclose(pruned(idx).numpy(), expected, rtol=0, atol=1e-6)
    assert np.abs(original - expected).max() > 1e-3          # the dropped units did matter
    for i, block in enumerate(pruned.blocks):
        assert tuple(block.mlp[0].weight.shape) == (12, 8) and tuple(block.mlp[2].weight.shape) == (8, 12)
    # 2 blocks x (8 * 32 + 32 + 32 * 8) -> 2 x (8 * 12 + 12 + 12 * 8): a dense, smaller model
    assert count_parameters(_gpt()) - count_parameters(pruned) == 2 * ((8 * 32 + 32 + 32 * 8) - (8 * 12 + 12 + 12 * 8))


def test_prune_mlp_units_keeps_everything_at_full_width_and_keeps_frozen_weights_frozen():
    gpt, reference = _gpt(1), _gpt(1)
    idx = torch.randint(0, 11, (2, 8))
    compress.prune_mlp_units(gpt.requires_grad_(False), 32)
    with torch.no_grad():
        np.testing.assert_allclose(gpt(idx).numpy(), reference(idx).numpy(), rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in gpt.parameters())


@pytest.mark.parametrize("bad", [0, 33, 2.0, True])
def test_bad_mlp_width_is_refused_naming_the_shapes(bad):
    with pytest.raises(ValueError, match=r"hidden must be an integer in \[1, 32\] .*\(32, 8\)"):
        compress.prune_mlp_units(_gpt(), bad)
    with pytest.raises(ValueError, match="CharGPT"):
        compress.prune_mlp_units(DigitsCNN(2), 1)
    factorised = _gpt()
    compress.factorize(factorised, 0.25)
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp .*Sequential"):
        compress.prune_mlp_units(factorised, 4)


# -- low rank ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [1, 3, 6])
def test_low_rank_linear_is_the_truncated_svd(rank):
    torch.manual_seed(0)
    linear = nn.Linear(9, 6).double()
    W, b = linear.weight.detach().numpy(), linear.bias.detach().numpy()
    u, s, vh = np.linalg.svd(W, full_matrices=False)                              # NumPy's SVD
    W_r = (u[:, :rank] * s[:rank]) @ vh[:rank]
    pair = compress.low_rank_linear(linear, rank)
    product = (pair[1].weight @ pair[0].weight).detach().numpy()                  # (6, 9)
    np.testing.assert_allclose(product, W_r, atol=1e-12)
    error = np.linalg.norm(W - product)
    np.testing.assert_allclose(error, np.sqrt((s[rank:] ** 2).sum()), atol=1e-12)  # = discarded σ's norm
    assert compress.low_rank_error(linear, rank) == pytest.approx(error / np.linalg.norm(W), abs=1e-12)
    assert count_parameters(pair) == rank * (9 + 6) + 6                            # closed form
    x = torch.randn(4, 9, dtype=torch.float64)
    np.testing.assert_allclose(pair(x).detach().numpy(), x.numpy() @ W_r.T + b, atol=1e-12)
    assert torch.autograd.gradcheck(pair, (x.requires_grad_(),))


@pytest.mark.parametrize("rank", [2, 9])
def test_low_rank_conv2d_is_the_truncated_svd_of_the_flattened_kernel(rank):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1).double()
    W = conv.weight.detach().numpy().reshape(5, -1)                                # (5, 27)
    u, s, vh = np.linalg.svd(W, full_matrices=False)
    rank = min(rank, 5)
    W_r = ((u[:, :rank] * s[:rank]) @ vh[:rank]).reshape(5, 3, 3, 3)
    pair = compress.low_rank_conv2d(conv, rank)
    assert count_parameters(pair) == rank * (27 + 5) + 5
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    expected = F.conv2d(x, torch.from_numpy(W_r), conv.bias, stride=2, padding=1)
    np.testing.assert_allclose(pair(x).detach().numpy(), expected.detach().numpy(), rtol=0, atol=1e-12)
    if rank == 5:                                                                  # full rank: the same layer
        np.testing.assert_allclose(pair(x).detach().numpy(), conv(x).detach().numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("bad", [0, 7, 2.5])
def test_bad_rank_is_refused_naming_the_shape(bad):
    with pytest.raises(ValueError, match=r"rank must be an integer in \[1, 6\] .*\(6, 9\)"):
        compress.low_rank_linear(nn.Linear(9, 6), bad)
    with pytest.raises(ValueError, match=r"rank .*\[1, 4\] .*\(4, 2, 3, 3\)"):
        compress.low_rank_conv2d(nn.Conv2d(2, 4, 3), 5)


def test_factorize_replaces_the_layers_that_shrink():
    torch.manual_seed(0)
    model = DigitsCNN(8)
    before = count_parameters(model)
    report = compress.factorize(model, 0.25)
    by_name = {row["name"]: row for row in report}
    # block1: (8, 9) -> rank 2: 2 * 17 = 34 < 72; block2: (16, 72) -> rank 4: 352 < 1152;
    # block3: (32, 144) -> rank 8: 1408 < 4608; classifier: (10, 32) -> rank 3: 126 < 320.
    assert [by_name[n]["rank"] for n in ("block1.conv", "block2.conv", "block3.conv", "classifier")] == [2, 4, 8, 3]
    saved = sum(row["params_before"] - row["params_after"] for row in report)
    assert saved == (72 - 34) + (1152 - 352) + (4608 - 1408) + (320 - 126)
    assert count_parameters(model) == before - saved
    assert isinstance(model.block2.conv, nn.Sequential)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="rank_fraction"):
        compress.factorize(DigitsCNN(2), 0.0)


# -- measuring -------------------------------------------------------------------------------------
def test_saved_size_counts_the_stored_bytes(tmp_path):
    model = _mlp()
    n_bytes = compress.saved_size_bytes(model)
    assert 4 * count_parameters(model) < n_bytes < 4 * count_parameters(model) + 5000   # float32 + the zip wrapper
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    assert compress.saved_size_bytes(path) == path.stat().st_size
    dense = compress.magnitude_prune(_mlp(), 0.0)           # the same state-dict layout as a pruned model
    sparse = compress.magnitude_prune(_mlp(), 0.9)
    assert compress.saved_size_bytes(sparse) == compress.saved_size_bytes(dense)     # zeros cost as much as any float
    dense_zip = compress.saved_size_bytes(dense, compressed=True)
    assert compress.saved_size_bytes(sparse, compressed=True) < 0.5 * dense_zip      # ... until compressed


def test_latency_is_the_median_and_throughput_divides_by_it(monkeypatch):
    clock = iter(np.cumsum([0.0] + [1.0, 0.0] * 100 + [3.0, 0.0] * 100))               # call times 1, then 3
    monkeypatch.setattr(compress.time, "perf_counter", lambda: float(next(clock)))
    calls = []
    assert compress.median_latency(calls.append, "x", repeats=5, warmup=2) == 1.0
    assert len(calls) == 7
    assert compress.throughput(lambda b: None, list(range(12)), repeats=3, warmup=0) == 12.0
    with pytest.raises(ValueError, match="repeats"):
        compress.median_latency(calls.append, "x", repeats=0)


# -- ONNX export, ONNX Runtime, int8 -----------------------------------------------------------------
ONNX_ATOL = 1e-5        # float32 logits of torch and ONNX Runtime: different kernels, same maths


@pytest.mark.slow                                   # ONNX Runtime's quantization tools: a few seconds
def test_onnx_export_gives_the_same_outputs_and_int8_stays_close(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = DigitsCNN(8).eval()
    x = torch.randn(16, 1, 8, 8)
    path = compress.export_onnx(model, x[:2], tmp_path / "cnn.onnx", input_name="images")
    runtime = compress.OnnxModel(path)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(runtime(x), expected, rtol=0, atol=ONNX_ATOL)     # any batch size
    np.testing.assert_allclose(runtime(x[:1].numpy()), expected[:1], rtol=0, atol=ONNX_ATOL)
    scale = np.abs(expected).max()
    dynamic = compress.quantize_dynamic_int8(path, tmp_path / "cnn.dyn.onnx")
    static = compress.quantize_static_int8(path, tmp_path / "cnn.static.onnx", [x[:8], x[8:]])
    for quantized in (dynamic, static):
        out = compress.OnnxModel(quantized)(x)
        assert np.abs(out - expected).max() < 0.1 * scale                          # int8: close, not equal
        assert compress.saved_size_bytes(quantized) < compress.saved_size_bytes(path)
    assert not list(tmp_path.glob("*.pre.onnx"))                                  # intermediate files removed
    with pytest.raises(ValueError, match="calibration"):
        compress.quantize_static_int8(path, tmp_path / "none.onnx", [])


def test_onnx_export_of_the_char_gpt(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    gpt = CharGPT(GPTConfig(vocab_size=13, context=16, n_layer=1, n_head=2, width=16)).eval()
    idx = torch.randint(0, 13, (3, 16))
    runtime = compress.OnnxModel(compress.export_onnx(gpt, idx[:1], tmp_path / "gpt.onnx", input_name="idx"))
    with torch.no_grad():
        np.testing.assert_allclose(runtime(idx), gpt(idx).numpy(), rtol=0, atol=ONNX_ATOL)


@pytest.mark.slow
def test_onnx_export_with_the_dynamo_exporter(tmp_path):
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = DigitsCNN(2).eval()
    x = torch.randn(5, 1, 8, 8)
    runtime = compress.OnnxModel(compress.export_onnx(model, x[:2], tmp_path / "d.onnx", dynamo=True))
    with torch.no_grad():
        np.testing.assert_allclose(runtime(x), model(x).numpy(), rtol=0, atol=ONNX_ATOL)


def test_onnx_bits_per_char_equals_torchs_on_padded_windows(tmp_path):
    pytest.importorskip("onnxruntime")
    from kd_ref.data.text import ValidationWindows, bits_per_char
    from kd_ref.recipes.compression import onnx_bits_per_char
    torch.manual_seed(0)
    gpt = CharGPT(GPTConfig(vocab_size=13, context=8, n_layer=1, n_head=2, width=16)).eval()
    blocks = [torch.randint(0, 13, (n,)) for n in (20, 11, 9)]             # last windows are padded
    windows = ValidationWindows(blocks, context=8, batch_size=2)
    runtime = compress.OnnxModel(compress.export_onnx(gpt, windows.x[:1], tmp_path / "g.onnx", input_name="idx"))
    assert onnx_bits_per_char(runtime, windows) == pytest.approx(bits_per_char(gpt, windows), abs=1e-5)
