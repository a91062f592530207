"""Pyramid scales by hand."""
import pytest

from modules.detection.pyramid import pyramid_scales, scaled_size


def test_scales_by_hand():
    # 100x80, min face 20: m = 12/20 = 0.6; shorter side 80 -> 48, 34.03, 24.13, 17.11, 12.13, 8.60 (< 12: stop)
    scales = pyramid_scales(100, 80)
    assert scales == pytest.approx([0.6, 0.6 * 0.709, 0.6 * 0.709 ** 2, 0.6 * 0.709 ** 3, 0.6 * 0.709 ** 4])
    assert min(100, 80) * scales[-1] >= 12 > min(100, 80) * scales[-1] * 0.709


def test_scales_edge_cases_by_hand():
    assert pyramid_scales(12, 12, min_face=12) == [1.0]          # exactly one window: one level
    assert pyramid_scales(11, 500, min_face=12) == []            # shorter than the net's input
    assert pyramid_scales(19, 19) == []                          # 19 * 0.6 = 11.4 < 12
    assert pyramid_scales(20, 30) == [0.6]                       # 20 * 0.6 = 12
    assert pyramid_scales(40, 40, min_face=40, factor=0.5) == [0.3]   # 40 * 0.3 = 12, then 6
    assert pyramid_scales(48, 48, min_face=12, factor=0.5) == [1.0, 0.5, 0.25]   # 48, 24, 12
    with pytest.raises(ValueError):
        pyramid_scales(100, 100, factor=1.0)


def test_scaled_size_rounds_and_never_goes_below_the_net_input():
    assert scaled_size(480, 640, 0.6) == (288, 384)
    assert scaled_size(100, 81, 0.125) == (12, 12)  # 12.5 -> 12 (round half to even), 10.1 -> 12
    assert scaled_size(101, 205, 0.5) == (50, 102)
