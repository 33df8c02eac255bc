"""Pictures a user looks at: augmented view pairs and a t-SNE map of the embedding."""

from __future__ import annotations

import io

import numpy as np

from simclr_jax import storage


def view_pairs_grid(views: np.ndarray, max_pairs: int = 8) -> np.ndarray:
  """(N, 2, H, W, 3) uint8 views -> one (rows * (H + 2), 2 * W + 2, 3) float32 image in
  [0, 1]: each row is one image's two views side by side."""
  views = np.asarray(views[:max_pairs], np.float32) / 255.0
  rows = []
  for first, second in views:
    gap = np.ones((first.shape[0], 2, 3), np.float32)
    rows.append(np.concatenate([first, gap, second], axis=1))
    rows.append(np.ones((2, rows[-1].shape[1], 3), np.float32))
  return np.concatenate(rows, axis=0)


def tsne_map(features: np.ndarray, labels: np.ndarray, path, title: str,
             max_points: int = 5000, seed: int = 0) -> np.ndarray:
  """t-SNE of (n, F) features coloured by class, saved as a PNG at `path` (local or
  gs://, through `storage`).

  At most `max_points` examples (a fixed random subset) keep it to seconds.

  Returns:
    The picture as a (H, W, 3) uint8 array (for TensorBoard).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  if len(labels) > max_points:
    keep = np.sort(rng.choice(len(labels), max_points, replace=False))
    features, labels = features[keep], labels[keep]
  perplexity = float(min(30, max(2, len(labels) // 4)))
  points = TSNE(n_components=2, init="pca", perplexity=perplexity,
                random_state=seed).fit_transform(features)

  figure, axes = plt.subplots(figsize=(7, 7), dpi=100)
  num_classes = int(labels.max()) + 1
  colormap = plt.get_cmap("tab10" if num_classes <= 10 else "gist_ncar")
  axes.scatter(points[:, 0], points[:, 1], c=labels, cmap=colormap, s=6, alpha=0.8,
               vmin=0, vmax=max(num_classes - 1, 1))
  if num_classes <= 10:
    for label in range(num_classes):
      axes.scatter([], [], color=colormap(label / max(num_classes - 1, 1)), label=str(label))
    axes.legend(loc="best", markerscale=2, fontsize=8)
  axes.set_title(title)
  axes.set_xticks([])
  axes.set_yticks([])
  figure.tight_layout()
  # Matplotlib writes local files only: render to memory, store through the storage layer.
  png = io.BytesIO()
  figure.savefig(png, format="png")
  storage.write_bytes(path, png.getvalue())
  figure.canvas.draw()
  picture = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
  plt.close(figure)
  return picture
