"""The learned critic's network: a small fully-convolutional encoder-decoder.

Per pixel (at 1/8 of the input resolution) it predicts, for each synthesizable distortion type,
the probability that the distortion is there and its severity (0..1); from its deepest features
it predicts a whole-view damage per type, from which the global score follows. Fine defects
(noise, 8x8 JPEG blocks, banding) live in single pixels, so the first layer sees every pixel
(a lossless 2x2 space-to-depth, not a strided convolution); context that tells a defect from
content (a soft background next to a sharp subject, a dark scene with bright lights) comes from
the 1/32 features and a pooled image summary that the decoder sees everywhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..schema import DISTORTIONS

TYPES: tuple[str, ...] = tuple(d for d in DISTORTIONS if d != "other")  # what a map can show
STRIDE = 32  # inputs are padded to a multiple of this
MAP_STRIDE = 8  # one map cell per 8 x 8 input pixels


@dataclass
class NetConfig:
    """Widths of the network; stored in the weights' metadata so a file always rebuilds its net."""

    widths: tuple[int, ...] = (24, 48, 64, 96, 192)  # at 1/2, 1/4, 1/8, 1/16, 1/32
    blocks: tuple[int, ...] = (0, 0, 1, 2, 2)  # residual blocks per stage
    decoder: int = 64
    types: tuple[str, ...] = TYPES

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> NetConfig:
        data = json.loads(text)
        return cls(
            widths=tuple(data["widths"]),
            blocks=tuple(data["blocks"]),
            decoder=int(data["decoder"]),
            types=tuple(data["types"]),
        )


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, act: bool = True):
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
            nn.BatchNorm2d(cout),
        )
        if act:
            self.append(nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.a = ConvBN(c, c)
        self.b = ConvBN(c, c, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.b(self.a(x)), inplace=True)


@dataclass
class NetOutput:
    """Logits (sigmoid gives probabilities / 0..1 values): training uses binary cross-entropy on
    them, which never stops pushing as a saturated sigmoid under an L1 loss would."""

    presence: torch.Tensor  # (N, T, H/8, W/8): is the type there
    severity: torch.Tensor  # (N, T, H/8, W/8): how bad where it is
    damage: torch.Tensor  # (N, T): damage to the whole view per type


class Residuals(nn.Module):
    """Fixed front end: luma residuals (Laplacian, horizontal and vertical steps, and a 3x3
    second-order filter) at two gains, soft-clipped, plus log-chroma.

    A network learning from raw pixels takes long to notice a residual of one grey level under
    content a hundred times stronger (steganalysis networks use fixed high-pass front ends for the
    same reason); at the fine gain a quarter of a grey level is one unit and the clip keeps edges
    from drowning the noise floor, JPEG steps and banding; the coarse gain keeps texture (tens of
    grey levels) apart from noise (a few). A colour cast multiplies the channels, i.e.
    shifts the log-chroma of every pixel by one vector."""

    gains: tuple[float, ...] = (16.0, 2.0)

    def __init__(self):
        super().__init__()
        k = torch.zeros(4, 1, 3, 3)
        k[0, 0] = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])
        k[1, 0] = torch.tensor([[0.0, 0, 0], [0, -1, 1], [0, 0, 0]])
        k[2, 0] = torch.tensor([[0.0, 0, 0], [0, -1, 0], [0, 1, 0]])
        k[3, 0] = torch.tensor([[1.0, -2, 1], [-2, 4, -2], [1, -2, 1]]) / 4.0
        self.register_buffer("kernels", k, persistent=False)
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)

    @property
    def channels(self) -> int:
        return 3 + 4 * len(self.gains) + 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x * self.luma).sum(dim=1, keepdim=True)
        r = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), self.kernels)
        res = [3.0 * torch.tanh(r * (g / 3.0)) for g in self.gains]
        lin = torch.log(x.clamp(0, 1).pow(2.2) + 0.02)
        chroma = torch.cat([lin[:, :1] - lin[:, 1:2], 0.5 * (lin[:, :1] + lin[:, 1:2]) - lin[:, 2:3]], dim=1)
        return torch.cat([(x - 0.5) * 4.0, *res, chroma], dim=1)


class CriticNet(nn.Module):
    def __init__(self, config: NetConfig | None = None):
        super().__init__()
        self.config = cfg = config or NetConfig()
        w = cfg.widths
        t = len(cfg.types)
        self.front = Residuals()
        self.stem = nn.Sequential(
            nn.PixelUnshuffle(2), ConvBN(4 * self.front.channels, w[0], k=1), ConvBN(w[0], w[0])
        )
        stages = [nn.Sequential(*[ResBlock(w[0]) for _ in range(cfg.blocks[0])])]
        for i in range(1, len(w)):
            stages.append(
                nn.Sequential(
                    ConvBN(w[i - 1], w[i], stride=2), *[ResBlock(w[i]) for _ in range(cfg.blocks[i])]
                )
            )
        self.stages = nn.ModuleList(stages)
        d = cfg.decoder
        # the pooled summary of the whole view (mean and spread of the deepest features)
        self.summary = nn.Sequential(nn.Linear(2 * w[-1], d), nn.ReLU(inplace=True))
        self.lat4 = ConvBN(w[4], d, k=1)
        self.lat3 = ConvBN(w[3], d, k=1)
        self.lat2 = ConvBN(w[2], d, k=1)
        self.fuse3 = ConvBN(d, d)
        self.fuse2 = ConvBN(d, d)
        self.maps = nn.Conv2d(d, 2 * t, 1)
        self.damage = nn.Sequential(nn.Linear(2 * w[-1], d), nn.ReLU(inplace=True), nn.Linear(d, t))

    def forward(self, x: torch.Tensor) -> NetOutput:
        """``x``: (N, 3, H, W) RGB in 0..1, H and W multiples of 32."""
        feats = []
        with torch.autocast(x.device.type, enabled=False):  # residuals of one grey level need float32
            front = self.front(x.float())
        h = self.stem(front)
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        deep = feats[4].float()
        # mean and spread over the view: unlike a max, they do not grow with the image's size
        mean = deep.mean(dim=(2, 3))
        spread = (deep.square().mean(dim=(2, 3)) - mean.square()).clamp_min(0).add(1e-6).sqrt()
        pooled = torch.cat([mean, spread], dim=1)
        ctx = self.summary(pooled)[:, :, None, None]
        y = self.lat4(deep) + ctx
        y = F.interpolate(y, size=feats[3].shape[2:], mode="bilinear", align_corners=False)
        y = self.fuse3(y + self.lat3(feats[3]))
        y = F.interpolate(y, size=feats[2].shape[2:], mode="bilinear", align_corners=False)
        y = self.fuse2(y + self.lat2(feats[2]))
        maps = self.maps(y)
        t = len(self.config.types)
        return NetOutput(presence=maps[:, :t], severity=maps[:, t:], damage=self.damage(pooled))


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def fuse_batchnorm(net: CriticNet) -> CriticNet:
    """Fold every BatchNorm into the convolution before it (inference only: ~1.3x faster on a CPU)."""
    for module in net.modules():
        if isinstance(module, ConvBN):
            conv, bn = module[0], module[1]
            if not isinstance(bn, nn.BatchNorm2d):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.Conv2d(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                conv.stride,
                conv.padding,
                bias=True,
                device=conv.weight.device,  # where the net is (a GPU), not the CPU
                dtype=conv.weight.dtype,
            )
            with torch.no_grad():
                fused.weight.copy_(conv.weight * scale[:, None, None, None])
                fused.bias.copy_(bn.bias - bn.running_mean * scale)
            module[0] = fused
            module[1] = nn.Identity()
    return net


class FoldedFront(nn.Module):
    """Inference form of the fixed front end and the stem's first two layers (space-to-depth, then
    a 1x1 convolution): 2x2 stride-2 convolutions straight over the raw features, with the front's
    affine maps (input offset, residual and chroma scales) folded into their weights. Same outputs
    up to float rounding, without writing the 13-channel full-resolution feature stack twice (the
    front and the space-to-depth took half of a megapixel's time on one CPU core)."""

    def __init__(self, front: Residuals, conv: nn.Conv2d):
        super().__init__()
        if conv.kernel_size != (1, 1) or conv.bias is None or conv.in_channels != 4 * front.channels:
            raise ValueError(
                "fold the front after fuse_batchnorm: the stem must start with a fused 1x1 convolution"
            )
        self.register_buffer("luma", front.luma.view(1, 3, 1, 1).clone())
        res = torch.cat([front.kernels * (g / 3.0) for g in front.gains])  # (4 x gains, 1, 3, 3)
        self.register_buffer("residual", res)
        n_res = res.shape[0]
        w = conv.weight.view(conv.out_channels, front.channels, 2, 2)  # space-to-depth order: c, dy, dx
        x_part, res_part, chroma = w[:, :3], w[:, 3 : 3 + n_res], w[:, 3 + n_res :]
        lin_part = torch.stack(  # chroma = (l0 - l1, (l0 + l1) / 2 - l2) over the log-linear channels
            [chroma[:, 0] + 0.5 * chroma[:, 1], -chroma[:, 0] + 0.5 * chroma[:, 1], -chroma[:, 1]], dim=1
        )
        # three convolutions summed rather than one over a concatenation: no full-size copy
        self.register_buffer("w_rgb", (4.0 * x_part).contiguous())
        self.register_buffer("w_residual", (3.0 * res_part).contiguous())
        self.register_buffer("w_lin", lin_part.contiguous())
        self.register_buffer("bias", conv.bias - 2.0 * x_part.sum(dim=(1, 2, 3)))  # (x - 0.5) * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.luma)
        r = torch.tanh_(F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), self.residual))
        lin = torch.log_(x.clamp(0, 1).pow_(2.2).add_(0.02))
        out = F.conv2d(x, self.w_rgb, self.bias, stride=2)
        out += F.conv2d(r, self.w_residual, stride=2)
        out += F.conv2d(lin, self.w_lin, stride=2)
        return F.relu_(out)


def prepare_for_inference(net: CriticNet) -> CriticNet:
    """Fused BatchNorm, folded front, channels-last memory: ~1.7x faster on a CPU, same outputs up to
    float rounding. The net can no longer be trained or saved afterwards."""
    fuse_batchnorm(net)
    net.front = FoldedFront(net.front, net.stem[1][0])
    net.stem = nn.Sequential(*list(net.stem)[2:])  # the folded front already ran the first two
    return net.to(memory_format=torch.channels_last)


def pad_to_stride(x: torch.Tensor, stride: int = STRIDE) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (N, C, H, W) on the bottom/right to multiples of ``stride``; returns the pads."""
    h, w = x.shape[2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (ph, pw)


def map_size(h: int, w: int) -> tuple[int, int]:
    return math.ceil(h / MAP_STRIDE), math.ceil(w / MAP_STRIDE)


# ----------------------------------------------------------------------------- weights on disk
class WeightsError(RuntimeError):
    """Missing, corrupt or incompatible weights; the message names the fix."""


RETRAIN_HINT = "retrain with `python -m assessor.train_embedded` or restore the file from the repository"


def save_weights(net: CriticNet, path, metadata: dict | None = None) -> None:
    """Write the state dict as safetensors (fp32) with the net config in the metadata."""
    import os
    import tempfile

    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    meta = {"net_config": net.config.to_json(), "format": "q-deepsight-learned-critic/1"}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".critic.", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        save_file(state, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_weights(path, device: str | torch.device = "cpu") -> CriticNet:
    """Rebuild the net from a safetensors file (eval mode, BatchNorm not yet fused)."""
    import os

    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError(f"learned critic weights not found at {path}; {RETRAIN_HINT}")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise WeightsError(f"cannot read learned critic weights {path} ({exc}); {RETRAIN_HINT}") from None
    if "net_config" not in meta:
        raise WeightsError(f"{path} is not a learned-critic weights file (no net_config); {RETRAIN_HINT}")
    net = CriticNet(NetConfig.from_json(meta["net_config"]))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsError(f"{path} does not fit the network ({first}); {RETRAIN_HINT}") from None
    return net.eval().to(device)


# ----------------------------------------------------------------------------- inference
@dataclass
class Prediction:
    """The net's view of one image, as numpy: maps cover the image at one cell per 8 x 8 pixels."""

    presence: object  # (T, ceil(H/8), ceil(W/8)) float32 probabilities
    severity: object  # same shape, 0..1
    damage: object  # (T,) whole-view damage per type, 0..1
    types: tuple[str, ...] = TYPES


@torch.inference_mode()
def predict(net: CriticNet, rgb, device: str | torch.device = "cpu") -> Prediction:
    """Run the net on one H x W x 3 uint8 image (any size >= 16 px; padded to a multiple of 32)."""
    import numpy as np

    h, w = rgb.shape[:2]
    rgb = np.ascontiguousarray(rgb)
    if not rgb.flags.writeable:  # torch.from_numpy warns on read-only arrays (e.g. ComfyUI's)
        rgb = rgb.copy()
    x = torch.from_numpy(rgb).to(device)
    x = x.permute(2, 0, 1)[None].float().div_(255.0)
    x, _ = pad_to_stride(x)
    out = net(x.contiguous(memory_format=torch.channels_last))
    mh, mw = map_size(h, w)
    return Prediction(
        presence=torch.sigmoid(out.presence[0, :, :mh, :mw]).float().cpu().numpy(),
        severity=torch.sigmoid(out.severity[0, :, :mh, :mw]).float().cpu().numpy(),
        damage=torch.sigmoid(out.damage[0]).float().cpu().numpy(),
        types=net.config.types,
    )
