"""DREAM (Dilated REfinement Attention Module), SPEC §4, as the authors compute it.

Five conv branches (1x1; 3x3 dilated at 6r, 12r, 18r; global pooling) through `nn.Conv2d` and
`nn.BatchNorm2d`, concatenated to `u`, re-weighted by `max(channel, spatial)` attention, multiplied
by `u` again and fused by a 1x1 conv. State-dict names and shapes are the authors'.
"""
from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """`c = u * ReLU(w_c . mean_{H,W}(u))`: one scalar per sample (`fc`: 1x1 conv 5Ch -> 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, 1, kernel_size=1, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        pooled = u.mean(dim=(2, 3), keepdim=True)
        return u * torch.relu(self.fc(pooled))


class SpatialAttention(nn.Module):
    """`s = u * sigmoid(w_s . u)`: one scalar per pixel (`Conv1x1`: 1x1 conv 5Ch -> 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.Conv1x1 = nn.Conv2d(channels, 1, kernel_size=1, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u * torch.sigmoid(self.Conv1x1(u))


class ChannelSpatialAttention(nn.Module):
    """Elementwise `max(channel attention, spatial attention)`."""

    def __init__(self, channels: int):
        super().__init__()
        self.channel = ChannelAttention(channels)
        self.spatial = SpatialAttention(channels)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.max(self.channel(u), self.spatial(u))


def branch_geometry(rate: int) -> tuple[tuple[int, int, int], ...]:
    """`(kernel, padding, dilation)` of the conv branches 1-4: 1x1, then 3x3 dilated 6r, 12r, 18r
    with 'same' zero padding."""
    return (1, 0, rate), (3, 6 * rate, 6 * rate), (3, 12 * rate, 12 * rate), (3, 18 * rate, 18 * rate)


def _conv_bn_relu(dim_in: int, dim_out: int, kernel: int, padding: int, dilation: int, bn_mom: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(dim_in, dim_out, kernel, stride=1, padding=padding, dilation=dilation, bias=True),
        nn.BatchNorm2d(dim_out, momentum=bn_mom),
        nn.ReLU(inplace=True),
    )


def to_feature_map(x: torch.Tensor, dim_in: int) -> tuple[torch.Tensor, str]:
    """View a DREAM input as `[B, C, H, W]`; returns the map and the input's layout tag.

    `[N, C]` -> `[N, C, 1, 1]` ("matrix"), `[B, S, C]` -> `[B, C, 1, S]` ("sequence"),
    `[B, C, H, W]` as is ("map").
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"DREAM expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 2:
        layout, channels = "matrix", x.shape[1]
    elif x.dim() == 3:
        layout, channels = "sequence", x.shape[2]
    elif x.dim() == 4:
        layout, channels = "map", x.shape[1]
    else:
        raise ValueError(
            f"DREAM expects [N, C], [B, S, C] or [B, C, H, W] input, got shape {tuple(x.shape)}"
        )
    if channels != dim_in:
        raise ValueError(
            f"DREAM was built for {dim_in} input channels, got shape {tuple(x.shape)} "
            f"({channels} channels in the {layout} layout)"
        )
    if not x.is_floating_point():
        raise TypeError(f"DREAM expects a floating-point input, got {x.dtype}")
    if layout == "matrix":
        return x[:, :, None, None], layout
    if layout == "sequence":
        return x.transpose(1, 2).unsqueeze(2), layout
    return x, layout


def from_feature_map(y: torch.Tensor, layout: str) -> torch.Tensor:
    """Undo `to_feature_map` for the output: `[N, Ch]` for a matrix input, else `[B, Ch, H, W]`."""
    if layout == "matrix":
        return y[:, :, 0, 0]
    return y


def as_map(rows: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """`[B·H·W, K]` rows (one per pixel, channels last) -> a `[B, K, H, W]` view."""
    return rows.view(batch, height, width, rows.shape[1]).permute(0, 3, 1, 2)


def to_rows(fmap: torch.Tensor) -> torch.Tensor:
    """`[B, K, H, W]` -> `[B·H·W, K]` rows (a view when `fmap` is channels-last, else a copy)."""
    return fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1])


class DREAM(nn.Module):
    """The authors' DREAM block: `DREAM(dim_in, dim_out, rate=1, bn_mom=0.1)`.

    Input `[N, C]`, `[B, S, C]` or `[B, C, H, W]` (C = dim_in); output `[N, dim_out]` for a
    matrix input, else `[B, dim_out, H, W]` (`[B, dim_out, 1, S]` for a sequence).
    """

    def __init__(self, dim_in: int, dim_out: int, rate: int = 1, bn_mom: float = 0.1):
        super().__init__()
        if dim_in <= 0 or dim_out <= 0 or rate <= 0:
            raise ValueError(f"DREAM needs positive dim_in, dim_out and rate, got {dim_in}, {dim_out}, {rate}")
        self.dim_in, self.dim_out, self.rate = dim_in, dim_out, rate
        for index, geometry in enumerate(branch_geometry(rate), start=1):
            setattr(self, f"branch{index}", _conv_bn_relu(dim_in, dim_out, *geometry, bn_mom))
        self.branch5_conv = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=True)
        self.branch5_bn = nn.BatchNorm2d(dim_out, momentum=bn_mom)
        self.branch5_relu = nn.ReLU(inplace=True)
        self.conv_cat = _conv_bn_relu(dim_out * 5, dim_out, 1, 0, 1, bn_mom)
        self.fusion = ChannelSpatialAttention(dim_out * 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap, layout = to_feature_map(x, self.dim_in)
        height, width = fmap.shape[2], fmap.shape[3]
        pooled = fmap.mean(dim=(2, 3), keepdim=True)
        global_feature = self.branch5_relu(self.branch5_bn(self.branch5_conv(pooled)))
        u = torch.cat(
            [
                self.branch1(fmap),
                self.branch2(fmap),
                self.branch3(fmap),
                self.branch4(fmap),
                global_feature.expand(-1, -1, height, width),
            ],
            dim=1,
        )
        return from_feature_map(self.conv_cat(self.fusion(u) * u), layout)
