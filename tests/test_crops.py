"""Batched area crop-and-resize against independent references: average pooling of integer crops,
zero padding outside the image, and fractional windows on a finely upsampled copy of the image."""
import torch
import torch.nn.functional as F

from modules.detection.crops import IntegralImages


def test_integer_windows_equal_average_pooling_and_zero_padding():
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 50), generator=generator).float()
    other = torch.randint(0, 256, (3, 30, 20), generator=generator).float()
    integral = IntegralImages([image, other])
    windows = torch.tensor([[4.0, 6.0, 28.0, 30.0], [2.0, 6.0, 14.0, 30.0], [-6.0, -12.0, 18.0, 12.0],
                            [38.0, 30.0, 62.0, 54.0]])
    crops = integral.crop(windows, torch.tensor([0, 1, 0, 0]), 12)
    assert crops.shape == (4, 3, 12, 12) and crops.dtype == torch.float32
    assert torch.allclose(crops[0], F.avg_pool2d(image[None, :, 6:30, 4:28], 2)[0], atol=1e-4)
    assert torch.allclose(crops[1], F.avg_pool2d(other[None, :, 6:30, 2:14], (2, 1))[0], atol=1e-4)  # image 1
    padded = F.pad(image, (6, 20, 12, 20))  # zeros outside the image
    assert torch.allclose(crops[2], F.avg_pool2d(padded[None, :, 0:24, 0:24], 2)[0], atol=1e-4)
    assert torch.allclose(crops[3], F.avg_pool2d(padded[None, :, 42:66, 44:68], 2)[0], atol=1e-4)


def test_fractional_windows_equal_the_mean_over_their_exact_area():
    """Upsampling the image 4x by pixel replication makes windows on a quarter-pixel grid integer there."""
    generator = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 16, 20), generator=generator).float()
    fine = image.repeat_interleave(4, 1).repeat_interleave(4, 2)
    fine = F.pad(fine, (16, 16, 16, 16))  # 4 image pixels of zeros around
    windows = torch.tensor([[1.25, 2.5, 7.25, 8.5], [-1.5, 10.75, 4.5, 16.75], [3.0, 0.25, 16.5, 13.75]])
    crops = IntegralImages([image]).crop(windows, torch.zeros(3, dtype=torch.long), 3)
    for crop, (x0, y0, x1, y1) in zip(crops, (windows * 4 + 16).long().tolist()):
        reference = F.avg_pool2d(fine[None, :, y0:y1, x0:x1], ((y1 - y0) // 3, (x1 - x0) // 3))[0]
        assert torch.allclose(crop, reference, atol=1e-3)


def test_uint8_images_give_the_float_crops():
    """uint8 images get int32 tables: the same crops as their float copies (float64 tables)."""
    generator = torch.Generator().manual_seed(2)
    images = [torch.randint(0, 256, (3, 37, 45), generator=generator, dtype=torch.uint8),
              torch.randint(0, 256, (3, 20, 64), generator=generator, dtype=torch.uint8)]
    windows = torch.rand(50, 2, generator=generator) * 60 - 10
    windows = torch.cat([windows, windows + 1 + torch.rand(50, 2, generator=generator) * 30], dim=1)
    image_index = torch.randint(0, 2, (50,), generator=generator)
    from_uint8 = IntegralImages(images).crop(windows, image_index, 24)
    assert IntegralImages(images).flat.dtype == torch.int32
    from_float = IntegralImages([image.float() for image in images]).crop(windows, image_index, 24)
    assert torch.allclose(from_uint8, from_float, atol=1e-3)


def test_no_windows_and_large_values_stay_exact():
    image = torch.full((3, 600, 800), 255.0)
    integral = IntegralImages([image])
    assert integral.crop(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 24).shape == (0, 3, 24, 24)
    crop = integral.crop(torch.tensor([[700.0, 500.0, 800.0, 600.0]]), torch.zeros(1, dtype=torch.long), 24)
    assert torch.equal(crop, torch.full((1, 3, 24, 24), 255.0))  # float64 tables: no rounding at 1.2e8
    as_uint8 = IntegralImages([image.to(torch.uint8)])
    assert as_uint8.flat.dtype == torch.int32 and torch.equal(as_uint8.crop(
        torch.tensor([[700.0, 500.0, 800.0, 600.0]]), torch.zeros(1, dtype=torch.long), 24), crop)
