"""The learned critic's network, weights and training: shapes, save/load, errors, a loss that falls."""

import copy
import json

import numpy as np
import pytest
import torch

from assessor import benchdata
from assessor.learned import data as D
from assessor.learned.model import (
    TYPES,
    CriticNet,
    NetConfig,
    WeightsError,
    count_parameters,
    fuse_batchnorm,
    load_weights,
    predict,
    prepare_for_inference,
    save_weights,
)
from assessor.learned.train import DEFAULT_CARD, DEFAULT_WEIGHTS, TrainConfig, loss_terms, to_tensors, train

TINY = NetConfig(widths=(8, 12, 16, 24, 32), blocks=(0, 0, 1, 1, 1), decoder=16)
TABLE = D.SeverityTable({t: (0.2, 0.4, 0.6, 0.75, 0.9) for t in TYPES})


def tiny_run(seed: int, steps: int = 12):
    cfg = TrainConfig(
        seed=seed, steps=steps, batch=4, crop=64, lr=1e-2, warmup=0, threads=1, bf16=False, workers=0
    )
    data = D.DataConfig(crop=64, scene_size=96, pool=6, refresh=1, refresh_every=2)
    return train(cfg, data, TINY, table=TABLE, log=lambda *_: None, validate_at_end=False)


def held_out_loss(net: CriticNet) -> float:
    """The training loss on 16 fixed samples the run never draws (its own seed's stream differs)."""
    stream = D.SampleStream(
        99, D.DataConfig(crop=64, scene_size=96, pool=6, refresh=1, refresh_every=2), table=TABLE
    )
    batch = to_tensors([stream.sample() for _ in range(16)], "cpu")
    net = copy.deepcopy(net).train()  # batch statistics: a fresh net's running ones mean nothing yet
    with torch.no_grad():
        return loss_terms(net, batch, TrainConfig().loss_weights)[0].item()


def test_micro_training_loss_falls_and_is_deterministic():
    a = tiny_run(seed=3, steps=24)
    assert len(a.losses) == 24 and all(np.isfinite(a.losses))
    torch.manual_seed(3)  # the initialization train() starts from
    before = held_out_loss(CriticNet(TINY))
    after = held_out_loss(a.net)
    assert after < 0.75 * before, (before, after)
    b = tiny_run(seed=3, steps=24)
    assert a.losses == b.losses  # same seed, same thread count: the same run
    for (k, va), vb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(va, vb), k


def test_full_size_net_is_small_enough():
    net = CriticNet()
    n = count_parameters(net)
    assert 1_000_000 <= n <= 5_000_000
    assert 4 * n <= 10_000_000  # fp32 safetensors under 10 MB


def test_save_load_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    net = CriticNet(TINY)
    # non-trivial BatchNorm statistics, as after training
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 3, 64, 64))
    net.eval()
    path = tmp_path / "w.safetensors"
    save_weights(net, path, {"seed": 3})
    loaded = load_weights(path)
    assert loaded.config == TINY
    x = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        a, b = net(x), loaded(x)
    assert torch.equal(a.presence, b.presence) and torch.equal(a.damage, b.damage)
    fused = fuse_batchnorm(load_weights(path))
    with torch.no_grad():
        c = fused(x)
    assert torch.allclose(a.presence, c.presence, atol=1e-4) and torch.allclose(a.damage, c.damage, atol=1e-4)


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (33, 50)])
def test_inference_form_gives_the_trained_nets_outputs(size):
    # the folded front (luma, residual and chroma scales, space-to-depth into the first convolution)
    # and channels-last memory must change speed only, at any size predict() pads
    torch.manual_seed(1)
    net = CriticNet(TINY)
    net.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        net(torch.rand(2, 3, 64, 64))
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    net.eval()
    fast = prepare_for_inference(copy.deepcopy(net))
    assert not any(isinstance(m, torch.nn.PixelUnshuffle) for m in fast.modules())
    img = np.random.default_rng(0).integers(0, 256, size + (3,), dtype=np.uint8)
    img[: size[0] // 3] = 255  # clipped and black areas: the log-chroma's and residuals' extremes
    img[-size[0] // 4 :] = 0
    a, b = predict(net, img), predict(fast, img)
    for field in ("presence", "severity", "damage"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.shape == y.shape and np.abs(x - y).max() < 1e-5, field
    assert np.ptp(a.presence) > 0.01  # the comparison means something: the maps are not flat


def test_weights_errors_name_the_fix(tmp_path):
    with pytest.raises(WeightsError, match="train_embedded"):
        load_weights(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(WeightsError, match="cannot read.*train_embedded"):
        load_weights(bad)
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(WeightsError, match="not a learned-critic weights file"):
        load_weights(other)


@pytest.mark.parametrize("shape", [(16, 16, 3), (37, 53, 3), (64, 200, 3), (33, 31)])
def test_predict_covers_any_size(shape):
    net = fuse_batchnorm(CriticNet(TINY).eval())
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, shape[:2] + (3,), dtype=np.uint8)
    p = predict(net, img)
    h, w = shape[:2]
    assert p.presence.shape == (len(TYPES), -(-h // 8), -(-w // 8))
    assert p.severity.shape == p.presence.shape and p.damage.shape == (len(TYPES),)
    assert p.presence.dtype == np.float32
    assert 0 <= p.presence.min() and p.presence.max() <= 1 and 0 <= p.damage.min() and p.damage.max() <= 1


def test_shipped_weights_and_card_exist_and_match():
    assert DEFAULT_WEIGHTS.exists(), "commit the output of python -m assessor.train_embedded"
    assert DEFAULT_WEIGHTS.stat().st_size <= 10_000_000
    card = json.loads(DEFAULT_CARD.read_text())
    assert card["command"].startswith("python -m assessor.train_embedded")
    assert card["seed"] == 0 and card["types"] == list(TYPES)
    net = load_weights(DEFAULT_WEIGHTS)
    assert count_parameters(net) == card["parameters"]
    assert "held_out_rule" in card["data"] and set(benchdata.PHOTOS) <= set(card["data"]["held_out"])


def test_training_data_never_uses_a_benchmark_image():
    assert set(benchdata.PHOTOS) <= D.HELD_OUT and set(benchdata.EXTRA_CLEAN) <= D.HELD_OUT
    assert {"cat", "stereo_motorcycle", "grace_hopper"} <= D.HELD_OUT
    assert not D.HELD_OUT & {n.removeprefix("mpl:") for n in D.TRAIN_SHIPPED}
    for name in ("chelsea", "cat", "astronaut", "mpl:grace_hopper"):
        with pytest.raises(ValueError, match="not a training image"):
            D.load_shipped(name)


def test_samples_carry_consistent_labels():
    stream = D.SampleStream(5, D.DataConfig(crop=64, scene_size=96, pool=6), table=TABLE)
    seen = set()
    for _ in range(40):
        s = stream.sample()
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        assert s.presence.shape == (len(TYPES), 8, 8) and s.severity.shape == s.presence.shape
        assert 0 <= s.presence.min() and s.presence.max() <= 1
        applied = {a.distortion for a in s.applied}
        for i, t in enumerate(TYPES):
            if t not in applied:
                assert s.presence[i].max() == 0 and s.damage[i] == 0
        seen |= applied
        if not s.applied:
            assert s.damage.max() == 0
    assert len(seen) >= 6


@pytest.mark.parametrize("device, dtype", [("cpu", torch.float64), ("meta", torch.float32)])
def test_fusing_batchnorm_keeps_the_nets_device_and_dtype(device, dtype):
    # the learned critic loads its weights onto the GPU, then fuses: new convolutions made on the
    # CPU in float32 broke it on CUDA ("Input type (torch.cuda.FloatTensor) and weight type ...")
    net = fuse_batchnorm(CriticNet(TINY).eval().to(device=device, dtype=dtype))
    assert {(p.device.type, p.dtype) for p in net.parameters()} == {(device, dtype)}
    net = prepare_for_inference(CriticNet(TINY).eval().to(device=device, dtype=dtype))
    tensors = [*net.parameters(), *net.buffers()]
    assert {(t.device.type, t.dtype) for t in tensors} == {(device, dtype)}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    net = CriticNet(TINY).eval()
    img = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    gpu = prepare_for_inference(
        copy.deepcopy(net).to("cuda")
    )  # folded where it runs, as LearnedAssessor does
    a = predict(prepare_for_inference(net), img)
    b = predict(gpu, img, "cuda")
    assert np.allclose(a.presence, b.presence, atol=1e-3)
