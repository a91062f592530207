"""Pictures: shapes and dtypes, and that each drawing lands where and in the colour it should."""
import cv2
import numpy as np
import pytest
import torch

from modules import pictures
from modules.pictures import (
    CURVE_COLOURS,
    LANDMARK_COLOUR,
    RIGHT_COLOUR,
    WRONG_COLOUR,
    pair_panel,
    retrieval_panel,
    roc_plot,
    sample_grid,
    save_png,
    to_rgb_uint8,
)

# a colour no drawing uses (and not a grey, as anti-aliased black text on white is): it marks where
# the image itself lies
MARK = (90, 40, 160)


def _marked(height=64, width=64):
    return np.full((height, width, 3), MARK, dtype=np.uint8)


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max(), ys.max()


def _is_colour(image, colour, tolerance=0):
    return np.all(np.abs(image.astype(int) - np.array(colour)) <= tolerance, axis=-1)


def test_to_rgb_uint8_reads_the_usual_layouts():
    chw = torch.full((3, 5, 7), 0.5)
    assert to_rgb_uint8(chw).shape == (5, 7, 3) and to_rgb_uint8(chw)[0, 0, 0] == 128
    assert to_rgb_uint8(np.zeros((5, 7))).shape == (5, 7, 3)
    assert to_rgb_uint8(np.full((4, 4, 1), 2.0))[0, 0, 0] == 255        # clipped
    with pytest.raises(ValueError):
        to_rgb_uint8(np.zeros((4, 4, 5)))


def test_sample_grid_shape_and_layout():
    grid = sample_grid([_marked() for _ in range(10)], cols=4, tile_size=64)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    one_row = sample_grid([_marked() for _ in range(4)], cols=4, tile_size=64)
    assert grid.shape[1] == one_row.shape[1] and grid.shape[0] > 2.5 * one_row.shape[0]
    assert _is_colour(grid, MARK).sum() == 10 * 64 * 64


# a wide image (centred vertically) and a tall one (centred horizontally), both scaled by 0.64
@pytest.mark.parametrize("height, width", [(100, 200), (200, 100)])
def test_sample_grid_draws_the_box_and_landmarks_where_they_are(height, width):
    image = _marked(height, width)
    ann = {"box": [20, 50, 80, 90], "landmarks": [[50, 70]]}
    plain = sample_grid([image], [{}], tile_size=128)
    drawn = sample_grid([image], [ann], tile_size=128)
    assert plain.shape == drawn.shape
    ix0, iy0, _, _ = _bbox(_is_colour(plain, MARK))  # where the image lies in the grid
    changed = np.any(drawn != plain, axis=-1)
    x0, y0, x1, y1 = _bbox(changed)
    scale = 0.64
    expected = (ix0 + 20 * scale, iy0 + 50 * scale, ix0 + 80 * scale, iy0 + 90 * scale)
    # the 2-pixel rectangle outline is centred on the box edges
    for got, want in zip((x0, y0, x1, y1), expected):
        assert abs(got - want) <= 1.5
    centre = (int(round(iy0 + 70 * scale)), int(round(ix0 + 50 * scale)))
    assert tuple(drawn[centre]) == LANDMARK_COLOUR


def test_sample_grid_keypoints_skeleton_and_identity_caption():
    image = _marked(100, 100)
    keypoints = [[20, 20, 2], [80, 80, 2], [80, 20, 0]]     # the third is not labelled
    plain = sample_grid([image], [{}], tile_size=100)
    no_skeleton = sample_grid([image], [{"keypoints": keypoints}], tile_size=100)
    with_skeleton = sample_grid([image], [{"keypoints": keypoints}], tile_size=100,
                                skeleton=[(0, 1), (1, 2)])
    ix0, iy0, _, _ = _bbox(_is_colour(plain, MARK))
    assert np.any(no_skeleton[iy0 + 20, ix0 + 20] != MARK)           # dots at visible keypoints
    assert np.all(no_skeleton[iy0 + 14:iy0 + 27, ix0 + 74:ix0 + 87] == MARK)  # nothing at v = 0
    assert np.all(no_skeleton[iy0 + 50, ix0 + 50] == MARK)
    assert np.any(with_skeleton[iy0 + 50, ix0 + 50] != MARK)         # bone 0-1 through the middle
    assert np.all(with_skeleton[iy0 + 50, ix0 + 80] == MARK)         # bone 1-2 skipped (v = 0)
    captioned = sample_grid([image], [{"identity": 12}], tile_size=100)
    below = slice(iy0 + 100, None)
    assert np.all(plain[below] == 255) and np.any(captioned[below] < 128)


def _components(mask):
    count, _, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    return [(stats[k, cv2.CC_STAT_AREA], centroids[k]) for k in range(1, count)]


def test_retrieval_panel_frames_right_green_and_wrong_red():
    queries = [_marked() for _ in range(2)]
    gallery = [_marked() for _ in range(6)]
    neighbours = np.array([[0, 1, 2, 3, 4], [5, 4, 3, -1, -1]])
    correct = np.array([[1, 0, 1, 0, 0], [0, 1, 1, 0, 0]], dtype=bool)
    panel = retrieval_panel(queries, gallery, neighbours, correct, top_k=5, tile_size=64, border=4)
    assert panel.dtype == np.uint8 and panel.shape[2] == 3
    frame_area = (64 + 8) ** 2 - 64 ** 2
    rows = []
    for colour in (RIGHT_COLOUR, WRONG_COLOUR):
        found = _components(_is_colour(panel, colour))
        assert all(area == frame_area for area, _ in found)         # whole frames, nothing else
        rows.append([(round(c[1]), round(c[0]), colour) for _, c in found])
    frames = sorted(rows[0] + rows[1])                            # by row, then by column
    row_y = sorted({y for y, _, _ in frames})
    assert len(row_y) == 2
    for q, y in enumerate(row_y):
        colours = [colour for fy, _, colour in frames if fy == y]
        shown = int(np.sum(neighbours[q] >= 0))
        assert colours == [RIGHT_COLOUR if c else WRONG_COLOUR for c in correct[q, :shown]]
    # the images themselves: 2 queries + 5 + 3 neighbours
    assert _is_colour(panel, MARK).sum() == 10 * 64 * 64


def _curve_columns(image, colour):
    """Columns holding a long vertical run of the colour (the steps of a staircase curve)."""
    mask = _is_colour(image, colour, tolerance=40)
    counts = mask.sum(axis=0)
    columns = np.flatnonzero(counts > 40)
    groups = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
    return [g.mean() for g in groups if len(g)]


def test_roc_plot_log_axis_places_decades_evenly_and_higher_curves_higher():
    staircase = (np.array([1e-4, 1e-3, 1e-3, 1e-2, 1e-2, 1e-1, 1e-1, 1.0]),
                 np.array([0.0, 0.0, 0.3, 0.3, 0.6, 0.6, 0.9, 0.9]))
    image = roc_plot({"steps": staircase}, size=(800, 600))
    assert image.shape == (600, 800, 3) and image.dtype == np.uint8
    steps = _curve_columns(image, CURVE_COLOURS[0])
    assert len(steps) == 3
    assert abs((steps[1] - steps[0]) - (steps[2] - steps[1])) <= 2      # one decade = one width
    linear = roc_plot({"steps": staircase}, log_fpr=False, size=(800, 600))
    lin_steps = _curve_columns(linear, CURVE_COLOURS[0])
    assert lin_steps[1] - lin_steps[0] < 0.2 * (steps[1] - steps[0])     # crowded at the left

    flat = np.array([0.0, 1.0])
    two = roc_plot({"good": (flat, np.array([0.9, 0.9])), "poor": (flat, np.array([0.3, 0.3]))})
    good_rows = np.nonzero(_is_colour(two, CURVE_COLOURS[0], tolerance=40))[0]
    poor_rows = np.nonzero(_is_colour(two, CURVE_COLOURS[1], tolerance=40))[0]
    assert np.median(good_rows) < np.median(poor_rows)


def test_pair_panel_shape_text_and_errors():
    panel = pair_panel([_marked()] * 5, [_marked()] * 5, [0.1, 0.2, 0.3, 0.4, 0.5], "hard pairs",
                       tile_size=64, pairs_per_row=2)
    assert panel.dtype == np.uint8 and panel.shape[2] == 3
    assert _is_colour(panel, MARK).sum() == 10 * 64 * 64
    ys, _ = np.nonzero(_is_colour(panel, MARK))
    assert np.any(panel[: ys.min()] < 128)                      # the title above the first row
    untitled = pair_panel([_marked()] * 5, [_marked()] * 5, [0.1] * 5, tile_size=64, pairs_per_row=2)
    assert untitled.shape[0] < panel.shape[0]
    with pytest.raises(ValueError):
        pair_panel([_marked()] * 2, [_marked()], [0.1, 0.2], "x")


def test_save_png_round_trip(tmp_path):
    image = np.zeros((10, 20, 3), dtype=np.uint8)
    image[..., 0] = 200                                          # red in RGB
    path = save_png(tmp_path / "sub" / "red.png", image)
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, image)


def test_module_uses_no_plotting_library():
    source = open(pictures.__file__).read()
    assert "matplotlib" not in source and "PIL" not in source
