"""Folder sources: class folders, flat folders, the raw Food-101 layout; bad files counted."""

import jax
import numpy as np
import pytest
import tensorflow as tf
from etils import epath

from configs import demo
from simclr_jax.data import folder_sources, input_pipeline, sources
from simclr_jax.data.augmentations import cropping


def _write_jpeg(path, value, size=(24, 32)):
  """A JPEG at `path` (local or ram://)."""
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  image = np.full((*size, 3), value, np.uint8)
  tf.io.write_file(str(path), tf.io.encode_jpeg(image))


def _class_tree(root, per_class=3, classes=("apple_pie", "sushi")):
  for label, name in enumerate(classes):
    for i in range(per_class):
      _write_jpeg(epath.Path(root) / name / f"{i}.jpg", (40 + 150 * label + 5 * i) % 256)


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
  with pytest.raises(sources.DatasetNotFoundError, match="splits .train. and .test."):
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
    cropping.decode_rgb((tmp_path / "sushi" / "corrupt.jpg").read_bytes())
  batches = list(input_pipeline.pretrain_dataset(config, source).take(3).as_numpy_iterator())
  assert [b["views"].shape for b in batches] == [(4, 2, 16, 16, 3)] * 3


def test_unknown_dataset_names_the_choices():
  config = demo.get_config()
  config.dataset = "food10l"
  with pytest.raises(sources.DatasetNotFoundError, match="Unknown dataset 'food10l'"):
    input_pipeline.create_source(config)


def test_missing_folder_is_a_clear_error(tmp_path):
  with pytest.raises(sources.DatasetNotFoundError, match="does not exist"):
    folder_sources.FolderSource(str(tmp_path / "nowhere"))
  with pytest.raises(sources.DatasetNotFoundError, match="unpacked food-101"):
    folder_sources.Food101RawSource(str(tmp_path))


@pytest.mark.parametrize("processes", [2, 3])
def test_process_shares_are_disjoint_and_cover_the_split(tmp_path, monkeypatch, processes):
  _class_tree(str(tmp_path), per_class=4)  # 8 files, all different.
  by_name = {"folder": folder_sources.FolderSource(str(tmp_path)),
             "digits": sources.DigitsSource()}
  for name, source in by_name.items():
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


def test_class_folders_that_are_all_empty_are_a_clear_error(tmp_path):
  (tmp_path / "apple_pie").mkdir()
  (tmp_path / "sushi").mkdir()
  (tmp_path / "sushi" / "notes.txt").write_text("not an image file name")
  source = folder_sources.FolderSource(str(tmp_path))
  assert source.classes == ["apple_pie", "sushi"]
  with pytest.raises(sources.DatasetNotFoundError,
                     match="No images .* class folders .apple_pie, sushi. are all empty"):
    source.num_examples("train")


@pytest.mark.parametrize("layout", ["classes", "flat"])
def test_a_folder_whose_files_are_all_unreadable_is_a_clear_error(tmp_path, layout):
  folder = tmp_path / "sushi" if layout == "classes" else tmp_path
  folder.mkdir(exist_ok=True)
  (folder / "empty.jpg").write_bytes(b"")
  (folder / "notes.png").write_text("not an image")
  source = folder_sources.FolderSource(str(tmp_path))
  with pytest.raises(sources.DatasetNotFoundError,
                     match="None of the 2 image files in .* is readable"):
    source.num_examples("train")


def test_food101_whose_listed_images_are_all_missing_is_a_clear_error(tmp_path):
  (tmp_path / "meta").mkdir()
  (tmp_path / "meta" / "classes.txt").write_text("sushi\n")
  (tmp_path / "meta" / "train.txt").write_text("sushi/0\nsushi/1\n")
  source = folder_sources.Food101RawSource(str(tmp_path))
  with pytest.raises(sources.DatasetNotFoundError, match="None of the 2 image files"):
    source.num_examples("train")


def test_split_folders_with_different_classes_name_what_each_lacks(tmp_path):
  _class_tree(tmp_path / "train", classes=("apple_pie", "sushi", "tacos"))
  _class_tree(tmp_path / "test", classes=("apple_pie", "ramen", "tacos"))
  with pytest.raises(sources.DatasetNotFoundError) as raised:
    folder_sources.FolderSource(str(tmp_path))  # At construction, before any training.
  message = str(raised.value)
  assert f"{tmp_path / 'test'} lacks sushi;" in message
  assert f"{tmp_path / 'train'} lacks ramen." in message
  assert "\n" not in message


def test_a_flat_split_beside_a_class_split_is_a_mismatch(tmp_path):
  _class_tree(tmp_path / "train")
  _write_jpeg(tmp_path / "test" / "0.jpg", 10)
  with pytest.raises(sources.DatasetNotFoundError,
                     match="test lacks apple_pie, sushi; .*train lacks none"):
    folder_sources.FolderSource(str(tmp_path))


def test_sources_over_a_non_local_file_system(ram_root, tmp_path, monkeypatch):
  """ram:// (TensorFlow's in-memory file system, through epath like gs://): listing,
  the head/tail checks and tf.data's reads; nothing lands in the current directory."""
  monkeypatch.chdir(tmp_path)
  folders = f"{ram_root}/folders"
  _class_tree(f"{folders}/train", per_class=3)
  _class_tree(f"{folders}/test", per_class=2)
  good = tf.io.gfile.GFile(f"{folders}/train/sushi/0.jpg", "rb").read()
  with tf.io.gfile.GFile(f"{folders}/train/sushi/truncated.jpg", "wb") as f:
    f.write(good[:len(good) // 3])
  source = folder_sources.FolderSource(folders)
  assert source.classes == ["apple_pie", "sushi"]
  assert source.num_examples("train") == 6 and source.num_skipped("train") == 1
  assert source.num_examples("test") == 4 and _labels(source, "test") == [0, 0, 1, 1]
  assert all(p.startswith(f"{folders}/") for p in source._files("train").paths)
  first = next(iter(source.local_dataset("train", False, 0)))
  assert first["image"].numpy()[:3] == b"\xff\xd8\xff"

  food = f"{ram_root}/food-101"
  _class_tree(f"{food}/images")
  for name, text in [("classes", "apple_pie\nsushi\n"), ("train", "apple_pie/0\nsushi/1\n"),
                     ("test", "apple_pie/2\nsushi/2\n")]:
    with tf.io.gfile.GFile(f"{food}/meta/{name}.txt", "w") as f:
      f.write(text)
  raw = folder_sources.Food101RawSource(food)
  assert raw.classes == ["apple_pie", "sushi"] and _labels(raw, "train") == [0, 1]
  assert len([e for e in raw.local_dataset("test", False, 0)]) == 2

  with pytest.raises(sources.DatasetNotFoundError, match="does not exist"):
    folder_sources.FolderSource(f"{ram_root}/nowhere")
  assert not list(tmp_path.iterdir())
