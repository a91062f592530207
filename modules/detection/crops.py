"""Crop-and-resize of many windows from many images in one tensor operation, averaging each output pixel
over the area it covers (as ``interpolate(mode="area")`` does: no aliasing when a large face shrinks to
24 or 48 pixels), with zeros outside the image (MTCNN pads the crops of boxes that leave the image).

The area average of a piecewise-constant image over any rectangle is exact from its summed-area table
S (S[y, x] = sum of the pixels above and left of the point (x, y)): S is bilinear inside every pixel, so
bilinear interpolation of S at the rectangle's four corners, combined as S(x1, y1) - S(x0, y1) -
S(x1, y0) + S(x0, y0), is the exact sum. Corners are clamped to the image, which counts everything
outside as 0. Tables of uint8 images are int32 (exact up to 8.4 Mpixel images, half the memory
traffic), others float64 (a 640x480 image sums to ~8e7, beyond float32's exact integers). All images'
tables sit in one flat tensor, so windows of images of any sizes are gathered together.
"""
from __future__ import annotations

import torch

WINDOWS_PER_BLOCK = 512  # windows gathered at once (bounds the float64 temporaries)


class IntegralImages:
    """The summed-area tables of a list of ``(C, H, W)`` images (any sizes, same device; uint8 or float
    pixel values)."""

    def __init__(self, images: list[torch.Tensor]):
        exact_in_int32 = all(not image.is_floating_point() and image.shape[1] * image.shape[2] * 255 < 2 ** 31
                             for image in images)
        dtype = torch.int32 if exact_in_int32 else torch.float64  # int32: half the memory traffic
        tables, starts, start = [], [], 0
        for image in images:
            channels, height, width = image.shape
            # stored transposed, (C, W + 1, H + 1): torch's cumsum is fastest along the last dimension
            table = image.new_zeros((channels, width + 1, height + 1), dtype=dtype)
            table[:, 1:, 1:] = image.cumsum(2, dtype=dtype).transpose(1, 2).contiguous().cumsum(2)
            tables.append(table.reshape(channels, -1))
            starts.append(start)
            start += (height + 1) * (width + 1)
        device = images[0].device
        self.flat = torch.cat(tables, dim=1)
        self.starts = torch.tensor(starts, device=device)
        self.heights = torch.tensor([image.shape[1] for image in images], device=device, dtype=torch.float64)
        self.widths = torch.tensor([image.shape[2] for image in images], device=device, dtype=torch.float64)

    def crop(self, windows: torch.Tensor, image_index: torch.Tensor, size: int) -> torch.Tensor:
        """``(K, C, size, size)`` float32: window k (``x0, y0, x1, y1``, continuous coordinates, positive
        width and height) of image ``image_index[k]``, each output pixel the mean over its area."""
        if len(windows) == 0:
            return self.flat.new_zeros((0, self.flat.shape[0], size, size), dtype=torch.float32)
        return torch.cat([self._crop_block(windows[i:i + WINDOWS_PER_BLOCK], image_index[i:i + WINDOWS_PER_BLOCK],
                                           size) for i in range(0, len(windows), WINDOWS_PER_BLOCK)])

    def _crop_block(self, windows: torch.Tensor, image_index: torch.Tensor, size: int) -> torch.Tensor:
        windows = windows.double()
        fractions = torch.arange(size + 1, device=windows.device, dtype=torch.float64) / size
        width, height = self.widths[image_index, None], self.heights[image_index, None]
        xs = windows[:, 0:1] + (windows[:, 2:3] - windows[:, 0:1]) * fractions  # (K, size + 1) corners
        ys = windows[:, 1:2] + (windows[:, 3:4] - windows[:, 1:2]) * fractions
        xs, ys = torch.minimum(xs.clamp(min=0), width), torch.minimum(ys.clamp(min=0), height)
        x_low, y_low = torch.minimum(xs.floor(), width - 1), torch.minimum(ys.floor(), height - 1)
        fx, fy = (xs - x_low)[:, None, :], (ys - y_low)[:, :, None]  # (K, 1, s+1) and (K, s+1, 1)
        column = (height + 1).long()[:, :, None]  # the transposed table's row length
        base = self.starts[image_index, None, None] + y_low.long()[:, :, None] + x_low.long()[:, None, :] * column

        def table_at(dy: int, dx: int) -> torch.Tensor:  # (C, K, s+1, s+1)
            index = base + dy + dx * column
            return self.flat.index_select(1, index.flatten()).view(-1, *index.shape).double()

        table = (table_at(0, 0) * (1 - fx) + table_at(0, 1) * fx) * (1 - fy) \
            + (table_at(1, 0) * (1 - fx) + table_at(1, 1) * fx) * fy  # bilinear in S: exact
        sums = table[..., 1:, 1:] - table[..., :-1, 1:] - table[..., 1:, :-1] + table[..., :-1, :-1]
        cell_area = (windows[:, 2] - windows[:, 0]) * (windows[:, 3] - windows[:, 1]) / (size * size)
        return (sums / cell_area[None, :, None, None]).permute(1, 0, 2, 3).float()
