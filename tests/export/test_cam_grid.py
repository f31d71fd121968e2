"""export/cam.py: where the CAM's cells sit on the input, traced through the network's layers."""

from __future__ import annotations

import pytest

from export.cam import cam_grid

torch = pytest.importorskip("torch")
nn = torch.nn


class Residual(nn.Module):
    """A strided block with a strided shortcut, which runs on the block's input (an earlier size)."""

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.Conv2d(2, 2, 3, padding=1))
        self.shortcut = nn.Conv2d(2, 2, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.shortcut(x)


def linear_chain() -> nn.Module:
    from timm.layers import create_conv2d

    same = create_conv2d(2, 2, 3, stride=2, padding="same")  # timm's TF-style dynamic padding
    assert type(same).__name__ == "Conv2dSame"
    return nn.Sequential(
        nn.Conv2d(3, 2, 3, stride=2, padding=1),
        nn.ZeroPad2d((1, 0, 2, 0)),  # more before than after: shifts the grid
        same,
        nn.Conv2d(2, 2, 2),  # an even kernel: half a pixel
        nn.Conv2d(2, 2, 3, padding=1, dilation=2),  # dilated, padded less than its span
        Residual(),
        nn.AvgPool2d(2),
    )


def support_centres(net: nn.Module, size: int, axis: int) -> list[float]:
    """Independently of the tracing: a network of positive weights and no activation is linear, so the input
    pixels with a non-zero gradient for a cell are exactly the ones it sees; the middle of that span is its
    centre (pixel i spans [i, i + 1])."""
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(0.5) if p.ndim > 1 else p.zero_()
    x = torch.zeros(1, 3, size, size, requires_grad=True)
    out = net(x)
    centres = []
    for j in range(out.shape[2 + axis]):
        cell = out[0, 0, out.shape[2] // 2, j] if axis == 1 else out[0, 0, j, out.shape[3] // 2]
        (grad,) = torch.autograd.grad(cell, x, retain_graph=True)
        seen = grad[0].abs().sum(dim=0).sum(dim=0 if axis == 1 else 1).nonzero().flatten()
        first, last = int(seen[0]), int(seen[-1])
        if first > 0 and last < size - 1:  # a cell whose view the image's edge cuts has no clean middle
            centres.append((first + last + 1) / 2)
        else:
            centres.append(float("nan"))
    return centres


@pytest.mark.parametrize("size", [157, 160])
def test_traced_centres_are_where_each_cell_sees(size: int) -> None:
    net = linear_chain().eval()
    grid = cam_grid(net, net, (size, size))
    assert grid is not None
    for axis in (0, 1):
        stride, offset = grid["stride"][axis], grid["offset"][axis]
        measured = support_centres(net, size, axis)
        inner = [(j, c) for j, c in enumerate(measured) if c == c]
        assert len(inner) >= 2
        for j, centre in inner:
            assert offset + stride * j == pytest.approx(centre), (axis, j)
    assert grid["stride"] == [16.0, 16.0]
    assert grid["offset"] != [8.0, 8.0]  # not where an even division would put the first cell


def test_efficientnet_cells_start_at_the_first_pixel() -> None:
    """B3's convolutions pad symmetrically: cell c is centred on input pixel 32 c, not at 32 c + 16."""
    import timm

    net = timm.create_model("test_efficientnet", num_classes=3).eval()
    assert cam_grid(net.forward_features, net, (96, 96)) == {"stride": [32.0, 32.0], "offset": [0.5, 0.5]}


def test_tensorflow_same_padding_shifts_the_cells() -> None:
    """TF-style "same" pads the larger half after: a stride-2 3x3 layer's output j is centred on 2 j + 1."""
    from timm.layers import create_conv2d

    net = nn.Sequential(
        *[create_conv2d(3 if i == 0 else 1, 1, 3, stride=2, padding="same") for i in range(3)]
    )
    assert cam_grid(net, net, (64, 64)) == {"stride": [8.0, 8.0], "offset": [7.5, 7.5]}  # 1 + 2 + 4, + 0.5


def test_a_layout_it_cannot_follow_is_none() -> None:
    class Upsampled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, stride=4, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.interpolate(self.conv(x), scale_factor=2)  # no module: not traced

    net = Upsampled()
    assert cam_grid(net, net, (64, 64)) is None


def test_tracing_leaves_batch_norm_and_the_mode_alone() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4)).train()
    before = net[1].running_mean.clone()
    assert cam_grid(net, net, (32, 32)) == {"stride": [2.0, 2.0], "offset": [0.5, 0.5]}
    assert net.training
    assert torch.equal(net[1].running_mean, before)
    assert int(net[1].num_batches_tracked) == 0
