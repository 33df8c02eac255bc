"""Folder sources: class folders, flat folders, the raw Food-101 layout; bad files counted."""

import os

import jax
import numpy as np
import pytest
import tensorflow as tf

from configs import demo
from simclr_jax import augmentations, folder_sources, input_pipeline


def _write_jpeg(path, value, size=(24, 32)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = np.full((*size, 3), value, np.uint8)
  tf.io.write_file(path, tf.io.encode_jpeg(image))


def _class_tree(root, per_class=3):
  for label, name in enumerate(["apple_pie", "sushi"]):
    for i in range(per_class):
      _write_jpeg(os.path.join(root, name, f"{i}.jpg"), 40 + 150 * label + 5 * i)


def _labels(source, split):
  return sorted(int(e["label"]) for e in source.local_dataset(split, False, 0))


def test_class_folders_with_bad_files_skipped_and_counted(tmp_path):
  _class_tree(str(tmp_path))
  (tmp_path / "sushi" / "empty.jpg").write_bytes(b"")
  (tmp_path / "sushi" / "notes.jpg").write_text("not an image")
  source = folder_sources.FolderSource(str(tmp_path))
  assert source.classes == ["apple_pie", "sushi"] and source.num_classes == 2
  assert source.num_examples("train") == 6 and source.num_skipped("train") == 2
  assert _labels(source, "train") == [0, 0, 0, 1, 1, 1]
  # The elements decode through the shared augmentation path.
  element = next(iter(source.local_dataset("train", True, 0)))
  assert element["image"].dtype == tf.string


def test_train_and_test_subfolders_are_the_splits(tmp_path):
  _class_tree(str(tmp_path / "train"), per_class=3)
  _class_tree(str(tmp_path / "test"), per_class=2)
  source = folder_sources.FolderSource(str(tmp_path))
  assert source.num_examples("train") == 6 and source.num_examples("test") == 4


def test_flat_folder_is_unlabelled(tmp_path):
  for i in range(4):
    _write_jpeg(str(tmp_path / f"{i}.jpg"), 10 * i)
  source = folder_sources.FolderSource(str(tmp_path))
  assert source.num_classes == 0 and _labels(source, "train") == [-1] * 4


def test_raw_food101_layout_uses_the_official_splits(tmp_path):
  root = tmp_path / "food-101"
  _class_tree(str(root / "images"))
  (root / "meta").mkdir()
  (root / "meta" / "classes.txt").write_text("apple_pie\nsushi\n")
  (root / "meta" / "train.txt").write_text("apple_pie/0\napple_pie/1\nsushi/0\nsushi/1\n")
  (root / "meta" / "test.txt").write_text("apple_pie/2\nsushi/2\n")
  source = folder_sources.Food101RawSource(str(root))
  assert source.num_examples("train") == 4 and _labels(source, "test") == [0, 1]
  with pytest.raises(ValueError, match="splits 'train' and 'test'"):
    source.num_examples("validation")


def test_truncated_jpeg_and_png_are_skipped_and_counted_at_listing(tmp_path):
  _class_tree(str(tmp_path), per_class=4)
  good = (tmp_path / "sushi" / "0.jpg").read_bytes()
  (tmp_path / "sushi" / "truncated.jpg").write_bytes(good[:len(good) // 3])
  png = tf.io.encode_png(np.zeros((64, 64, 3), np.uint8)).numpy()
  (tmp_path / "sushi" / "whole.png").write_bytes(png)
  (tmp_path / "sushi" / "truncated.png").write_bytes(png[:len(png) - 12])  # IEND cut off.
  source = folder_sources.FolderSource(str(tmp_path))
  assert source.num_skipped("train") == 2
  assert source.num_examples("train") == 9  # 8 JPEGs and the whole PNG.


def test_pretraining_skips_a_jpeg_corrupt_inside(tmp_path):
  """Starts and ends like a JPEG (passes the listing checks) but does not decode."""
  _class_tree(str(tmp_path), per_class=4)
  good = (tmp_path / "sushi" / "0.jpg").read_bytes()
  (tmp_path / "sushi" / "corrupt.jpg").write_bytes(good[:20] + b"\x00" * 400 + b"\xff\xd9")
  config = demo.get_config()
  config.dataset, config.data_dir, config.batch_size = "folder", str(tmp_path), 4
  source = input_pipeline.create_source(config)
  assert source.num_skipped("train") == 0 and source.num_examples("train") == 9
  with pytest.raises(tf.errors.InvalidArgumentError):
    augmentations.decode_rgb((tmp_path / "sushi" / "corrupt.jpg").read_bytes())
  batches = list(input_pipeline.pretrain_dataset(config, source).take(3).as_numpy_iterator())
  assert [b["views"].shape for b in batches] == [(4, 2, 16, 16, 3)] * 3


def test_unknown_dataset_names_the_choices():
  config = demo.get_config()
  config.dataset = "food10l"
  with pytest.raises(input_pipeline.DatasetNotFoundError, match="Unknown dataset 'food10l'"):
    input_pipeline.create_source(config)


def test_missing_folder_is_a_clear_error(tmp_path):
  with pytest.raises(input_pipeline.DatasetNotFoundError, match="does not exist"):
    folder_sources.FolderSource(str(tmp_path / "nowhere"))
  with pytest.raises(input_pipeline.DatasetNotFoundError, match="unpacked food-101"):
    folder_sources.Food101RawSource(str(tmp_path))


@pytest.mark.parametrize("processes", [2, 3])
def test_process_shares_are_disjoint_and_cover_the_split(tmp_path, monkeypatch, processes):
  _class_tree(str(tmp_path), per_class=4)  # 8 files, all different.
  sources = {"folder": folder_sources.FolderSource(str(tmp_path)),
             "digits": input_pipeline.DigitsSource()}
  for name, source in sources.items():
    shares = []
    for index in range(processes):
      monkeypatch.setattr(jax, "process_count", lambda: processes)
      monkeypatch.setattr(jax, "process_index", lambda index=index: index)
      shares.append([np.asarray(e["image"]).tobytes() + np.asarray(e["label"]).tobytes()
                     for e in source.local_dataset("train", False, 0).as_numpy_iterator()])
    sizes = [len(share) for share in shares]
    assert sum(sizes) == source.num_examples("train"), name
    assert max(sizes) - min(sizes) <= 1, name
    if name == "folder":
      everything = [item for share in shares for item in share]
      assert len(set(everything)) == len(everything) == 8
