"""Data sources: where examples come from, before any augmentation.

Every source yields elements {'image', 'label': int32} for this process's share of a split
(disjoint across processes, covering the split); 'image' is a decoded (H, W, 3) uint8 image
or its encoded bytes, which the augmentations decode. `full_dataset(split)` is the whole
split in a fixed order and `labels(split)` its labels in that order (what a labelled subset
is chosen from: `subsets`). The folder sources (`folder_sources`) follow the same
protocol.
"""

from __future__ import annotations

import dataclasses
import difflib
import os

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


class DatasetNotFoundError(RuntimeError):
  """Data that cannot serve the run as configured (a user error, one `Error:` line): not
  prepared where we were told to look, an unknown name or split, no labels for a stage
  that needs them."""


def require_split(split: str, field: str, splits, dataset: str) -> None:
  """DatasetNotFoundError naming `field` (e.g. 'eval_split') unless `split` is one of
  `splits` (None: not known before the data is read; then nothing is checked)."""
  if splits is not None and split not in splits:
    raise DatasetNotFoundError(
        f"{dataset} has no split {split!r} (config.{field}); it has {', '.join(splits)}: "
        f"set --config.{field} to one of them.")


@dataclasses.dataclass
class TfdsSource:
  """A TFDS image-classification dataset, read with `tfds.split_for_jax_process`."""
  name: str
  data_dir: str | None = None

  def __post_init__(self):
    try:
      self._builder = tfds.builder(self.name, data_dir=self.data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise DatasetNotFoundError(unknown_dataset_message(self.name)) from e
    except ValueError as e:  # A malformed name ('food-101') or an unknown config/version.
      if str(e).startswith("Parsing builder name string"):
        raise DatasetNotFoundError(unknown_dataset_message(self.name)) from e
      first_line = next((line for line in str(e).splitlines() if line.strip()), "")
      raise DatasetNotFoundError(f"TFDS dataset {self.name!r} (config.dataset): "
                                 f"{first_line}") from e

  def splits(self) -> tuple[str, ...] | None:
    """The split names, or None when not prepared (then reading fails clearly)."""
    return tuple(sorted(self._builder.info.splits)) or None

  @property
  def num_classes(self) -> int:
    return self._builder.info.features["label"].num_classes

  def num_examples(self, split: str) -> int:
    """Examples in the whole `split` (all processes); raises if the data is missing."""
    splits = self._builder.info.splits
    if splits:
      if split not in splits:
        raise DatasetNotFoundError(
            f"Dataset '{self.name}' has no split {split!r}; it has {sorted(splits)}. Set "
            f"config.train_split / config.eval_split.")
      return splits[split].num_examples
    # No split metadata: not prepared (raises), or mocked data (tfds.testing.mock_data).
    return int(self._as_dataset(split, shuffle=False, seed=0).reduce(0, lambda n, _: n + 1))

  def local_dataset(self, split: str, shuffle: bool, seed: int) -> tf.data.Dataset:
    ds = self._as_dataset(split, shuffle, seed, tfds.split_for_jax_process(split))
    return ds.map(_image_and_label)

  def full_dataset(self, split: str) -> tf.data.Dataset:
    """The whole split (every process reads all of it) in a fixed order."""
    return self._as_dataset(split, shuffle=False, seed=0).map(_image_and_label)

  def labels(self, split: str) -> np.ndarray:
    """(n,) int32 labels of the whole split, in `full_dataset`'s order (one pass over its
    records: the images are read, not decoded)."""
    ds = self._as_dataset(split, shuffle=False, seed=0).map(
        lambda example: tf.cast(example["label"], tf.int32))
    batches = ds.batch(4096).as_numpy_iterator()
    return np.concatenate([np.zeros(0, np.int32), *batches])

  def _as_dataset(self, split: str, shuffle: bool, seed: int,
                  subsplit=None) -> tf.data.Dataset:
    """Encoded examples of `subsplit` (default: all of `split`); images stay JPEG/PNG
    bytes until the map decodes them."""
    read_config = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=16)
    try:
      return self._builder.as_dataset(split=subsplit or split, shuffle_files=shuffle,
                                      read_config=read_config,
                                      decoders={"image": tfds.decode.SkipDecoding()})
    except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as e:
      raise DatasetNotFoundError(self._not_prepared_message(split)) from e

  def _not_prepared_message(self, split: str) -> str:
    where = self.data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    return (
        f"TFDS dataset '{self.name}' (split '{split}') is not prepared in data_dir={where!r}.\n"
        f"Prepare it once, then point the run at it:\n"
        f"  tfds build {self.name} --data_dir=DIR        # downloads and prepares it\n"
        f"  python main.py ... --config.data_dir=DIR     # local path or gs://bucket/path\n"
        f"On a machine without network access, build it where there is network and copy "
        f"DIR over (or point data_dir at a bucket that holds it). Or set TFDS_DATA_DIR.")


@dataclasses.dataclass
class DigitsSource:
  """scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes).

  Shipped inside scikit-learn, so it works offline. A fixed stratified split keeps
  `test_fraction` of every class for evaluation ('test'). For choosing hyper-parameters
  without the test split, 'train' splits again (stratified, fixed) into
  'train_without_validation' and 'validation' (`validation_fraction` of it). Images
  become 8x8x3 uint8.
  """
  test_fraction: float = 0.25
  validation_fraction: float = 0.2
  split_seed: int = 0
  num_classes: int = 10
  SPLITS = ("train", "test", "train_without_validation", "validation")

  def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole split: images (n, 8, 8, 3) uint8 and labels (n,) int32."""
    from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top
    digits = datasets.load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int32)
    train_x, test_x, train_y, test_y = model_selection.train_test_split(
        images, labels, test_size=self.test_fraction, stratify=labels,
        random_state=self.split_seed)
    if split == "train":
      return train_x, train_y
    if split == "test":
      return test_x, test_y
    if split in ("train_without_validation", "validation"):
      fit_x, val_x, fit_y, val_y = model_selection.train_test_split(
          train_x, train_y, test_size=self.validation_fraction, stratify=train_y,
          random_state=self.split_seed)
      return (val_x, val_y) if split == "validation" else (fit_x, fit_y)
    raise DatasetNotFoundError(f"The digits source has splits {', '.join(self.SPLITS)}, "
                               f"not {split!r}.")

  def splits(self) -> tuple[str, ...]:
    return self.SPLITS

  def num_examples(self, split: str) -> int:
    return len(self.arrays(split)[1])

  def local_dataset(self, split: str, shuffle: bool, seed: int) -> tf.data.Dataset:
    del shuffle, seed  # In memory: shuffled by the pipeline's buffer.
    images, labels = self.arrays(split)
    shard = process_share(len(labels))
    return tf.data.Dataset.from_tensor_slices({"image": images[shard], "label": labels[shard]})

  def full_dataset(self, split: str) -> tf.data.Dataset:
    images, labels = self.arrays(split)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})

  def labels(self, split: str) -> np.ndarray:
    return self.arrays(split)[1]


LOCAL_DATASETS = ("digits", "folder", "food101_raw")  # Any other name is a TFDS dataset.
MAX_SUGGESTIONS = 3


def unknown_dataset_message(name: str) -> str:
  """One line: what config.dataset accepts, and the few closest names (never all ~450
  TFDS names)."""
  names = [*LOCAL_DATASETS, *tfds.list_builders(with_community_datasets=False)]
  # The name with case and separators aside ('Food-101' -> food101), else difflib's closest.
  folded = {n.replace("_", ""): n for n in names}
  key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
  close = [folded[key]] if key in folded else difflib.get_close_matches(
      name.lower(), names, n=MAX_SUGGESTIONS, cutoff=0.6)
  hint = f": did you mean {' or '.join(close)}?" if close else "."
  return (f"Unknown dataset {name!r}: config.dataset is a TFDS name (e.g. food101, cifar10) "
          f"or one of {', '.join(LOCAL_DATASETS)}{hint}")


def _image_and_label(example):
  return {"image": example["image"], "label": tf.cast(example["label"], tf.int32)}


def process_share(num_examples: int) -> np.ndarray:
  """Indices of this process's contiguous share of `num_examples` (disjoint across
  processes, covering all of them)."""
  return np.array_split(np.arange(num_examples), jax.process_count())[jax.process_index()]
