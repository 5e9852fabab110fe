"""The CPU fast inference path (channels-last weights and windows; oneDNN convolutions) gives the
reference path's probabilities and masks, and leaves the model as it found it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from h2aseg.config import ConfigError, InferConfig, load_config
from h2aseg.inference.sliding import predict_probabilities, probabilities_to_mask
from h2aseg.models import build_network
from h2aseg.models.fast_eval import (
    ChannelsLastForward,
    channels_last_weights,
    cpu_fast_forward,
    onednn_applies,
    onednn_convolutions,
)

CPU = torch.device("cpu")


def _tiny(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("h2aseg", variant=variant, channels=(4, 8, 8, 8, 8), window_size=(4, 4, 2)).eval()


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_channels_last_forward_equals_the_reference(variant: str) -> None:
    net = _tiny(variant)
    x = torch.randn(2, 2, 32, 32, 16)
    with torch.no_grad():
        ref = net(x)
        with cpu_fast_forward(net, True, CPU) as forward:
            assert isinstance(forward, ChannelsLastForward)
            fast = forward(x)
    assert fast.is_contiguous()
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_weights_are_restored_after_the_fast_path() -> None:
    net = _tiny("paper")
    before = {n: (p.data_ptr(), p.stride()) for n, p in net.named_parameters()}
    values = {n: p.detach().clone() for n, p in net.named_parameters()}
    with channels_last_weights(net):
        conv = net.encoder.conv2_ct.conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    assert {n: (p.data_ptr(), p.stride()) for n, p in net.named_parameters()} == before
    for n, p in net.named_parameters():
        assert torch.equal(p, values[n])


def test_fast_path_is_off_when_disabled_or_not_on_the_cpu() -> None:
    net = _tiny("paper")
    with cpu_fast_forward(net, False, CPU) as forward:
        assert forward is net
    with cpu_fast_forward(net, True, torch.device("meta")) as forward:
        assert forward is net


@pytest.mark.parametrize("out_channels", [1, 2])
def test_prediction_with_the_fast_path_equals_the_reference(out_channels: int) -> None:
    torch.manual_seed(0)
    net = build_network("h2aseg", channels=(4, 8, 8, 8, 8), window_size=(4, 4, 2), out_channels=out_channels)
    image = torch.randn(2, 40, 36, 20)
    probs = {}
    for fast in (False, True):
        cfg = InferConfig(overlap=0.25, sw_batch_size=2, cpu_fast_path=fast)
        probs[fast] = predict_probabilities(net, image, cfg, (32, 32, 16), CPU)
    torch.testing.assert_close(probs[True], probs[False], rtol=0, atol=1e-5)
    assert torch.equal(probabilities_to_mask(probs[True]), probabilities_to_mask(probs[False]))
    assert net.training  # prediction restored the mode it found


def test_cpu_fast_path_is_a_checked_config_field() -> None:
    assert load_config("synthetic").infer.cpu_fast_path is False  # opt-in: no measured win yet
    assert load_config("synthetic", ["infer.cpu_fast_path=true"]).infer.cpu_fast_path is True
    with pytest.raises(ConfigError, match=r"infer\.cpu_fast_path"):
        load_config("synthetic", ["infer.cpu_fast_path=maybe"])


def test_onednn_convolutions_equal_pytorchs_choice() -> None:
    x, w, b = torch.randn(1, 16, 12, 10, 6), torch.randn(8, 16, 3, 3, 3), torch.randn(8)
    ref = F.conv3d(x, w, b, stride=(2, 1, 1), padding=1)
    with onednn_convolutions(), torch.profiler.profile() as prof:
        out = F.conv3d(x, w, b, stride=(2, 1, 1), padding=1)
    assert "aten::mkldnn_convolution" in {e.key for e in prof.key_averages()}
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_onednn_convolutions_leave_training_and_bf16_alone() -> None:
    x, w = torch.randn(1, 4, 6, 6, 6), torch.randn(4, 4, 3, 3, 3, requires_grad=True)
    assert not onednn_applies(x, w, 1)  # autograd records: PyTorch's own choice
    assert not onednn_applies(x.bfloat16(), w.detach().bfloat16(), 1)
    assert not onednn_applies(x, w.detach(), "same")
    with onednn_convolutions():
        y = F.conv3d(x, w, padding=1)
    y.sum().backward()
    assert w.grad is not None
