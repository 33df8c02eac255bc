"""The pictures: view-pair grids of uint8 views; the t-SNE map is a real PNG."""

import numpy as np

from simclr_jax.evaluation import visualize


def test_view_pairs_grid_lays_out_pairs_in_unit_range():
  rng = np.random.default_rng(0)
  views = rng.integers(0, 256, size=(3, 2, 4, 5, 3), dtype=np.uint8)
  grid = visualize.view_pairs_grid(views)
  assert grid.shape == (3 * (4 + 2), 2 * 5 + 2, 3) and grid.dtype == np.float32
  np.testing.assert_allclose(grid[6:10, :5], views[1, 0] / 255, atol=1e-6)  # Row 1, view 1.
  np.testing.assert_allclose(grid[6:10, 7:], views[1, 1] / 255, atol=1e-6)  # Row 1, view 2.
  assert (grid[4:6] == 1.0).all()  # White gap between rows.
  assert visualize.view_pairs_grid(views, max_pairs=2).shape[0] == 2 * 6


def test_tsne_map_writes_a_png_of_the_classes(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 20)
  features = rng.normal(size=(60, 5)) + 10 * labels[:, None]
  path = tmp_path / "tsne.png"
  picture = visualize.tsne_map(features, labels, str(path), "test", max_points=50)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert picture.ndim == 3 and picture.shape[2] == 3 and picture.dtype == np.uint8
  assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 3  # Not a blank canvas.
