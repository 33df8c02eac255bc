"""Image files as data sources: class folders, a flat folder, the raw Food-101; on a
local disk or gs:// alike (listed and checked through `storage`, read by tf.data).

Files are listed once; any that is empty, not an image (checked from its first bytes) or
truncated (no end marker, JPEG and PNG) is skipped and counted, with a few example paths
logged. Elements carry the encoded bytes, so JPEGs are decoded fused with the random crops
(one crop-decode per image, `augmentations.decode_for_crops`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io

import numpy as np
import tensorflow as tf
from absl import logging
from etils import epath

from simclr_jax import storage
from simclr_jax.data.sources import DatasetNotFoundError, process_share

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
# Leading bytes of the formats tf.io.decode_image reads.
MAGIC_NUMBERS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


@dataclasses.dataclass
class FileList:
  """Readable image paths with integer labels (-1: unlabelled), and what was skipped."""
  paths: list[str]
  labels: list[int]
  skipped: list[str]


# Bytes that end a complete file: JPEG's end-of-image marker, PNG's IEND chunk type.
END_MARKERS = {b"\xff\xd8\xff": b"\xff\xd9", b"\x89PNG\r\n\x1a\n": b"IEND"}
TAIL_BYTES = 4096  # Where the end marker must be: trailers longer than this are rare.
CHECK_THREADS = 32  # Files checked at once when a source is listed.


def looks_like_an_image(path) -> bool:
  """True if the file is non-empty, starts like a JPEG, PNG, GIF or BMP, and (JPEG, PNG)
  has its end marker within its last TAIL_BYTES bytes: a truncated download or copy
  fails this test rather than the decoder in the middle of training. Local or gs://."""
  try:
    with storage.path(path).open("rb") as f:
      head = f.read(8)
      magic = next((m for m in MAGIC_NUMBERS if head.startswith(m)), None)
      if magic is None:
        return False
      end_marker = END_MARKERS.get(magic)
      if end_marker is None:
        return True
      # The size from the open file (local file or tf.io.gfile.GFile alike): epath's local
      # stat() also looks up the owner's name, which fails for uids without a passwd entry.
      f.seek(0, io.SEEK_END)
      f.seek(max(0, f.tell() - TAIL_BYTES))
      return end_marker in f.read()
  except (OSError, tf.errors.OpError):
    return False


def _keep_readable(paths: list[str], labels: list[int], where) -> FileList:
  """The readable ones of `paths`; DatasetNotFoundError when none is."""
  # Threads: on gs:// each check is two requests, so 101,000 files in turn would take an
  # hour; the checks wait on I/O, not on the interpreter.
  with concurrent.futures.ThreadPoolExecutor(CHECK_THREADS) as pool:
    keep = list(pool.map(looks_like_an_image, paths))
  skipped = [p for p, k in zip(paths, keep) if not k]
  if skipped:
    logging.warning("Skipped %d unreadable files (empty, truncated or not an image) in %s, "
                    "e.g. %s.",
                    len(skipped), where, skipped[:5])
  if len(skipped) == len(paths):
    raise DatasetNotFoundError(
        f"None of the {len(paths)} image files in {where} is readable (each is empty, "
        f"truncated or not an image), e.g. {skipped[:3]}: check config.data_dir.")
  return FileList([p for p, k in zip(paths, keep) if k],
                  [label for label, k in zip(labels, keep) if k], skipped)


def _image_files(folder: epath.Path) -> list[str]:
  """The folder's image files by name, as strings for tf.data (local or gs://)."""
  return sorted(str(f) for f in folder.iterdir() if f.name.lower().endswith(IMAGE_EXTENSIONS))


def _listed(names: list[str], limit: int = 10) -> str:
  """'a, b, c' ('none' when empty), cut after `limit` names."""
  if not names:
    return "none"
  more = f" and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


class _FileSource:
  """Shared by the folder sources: `_files(split)` gives the split's FileList."""
  num_classes: int
  reads_files = True  # Files corrupt inside are skipped in training (input_pipeline).

  def _files(self, split: str) -> FileList:
    raise NotImplementedError

  def num_examples(self, split: str) -> int:
    return len(self._files(split).paths)

  def num_skipped(self, split: str) -> int:
    return len(self._files(split).skipped)

  def local_dataset(self, split: str, shuffle: bool, seed: int) -> tf.data.Dataset:
    """This process's contiguous share of the split, {'image': bytes, 'label': int32}."""
    files = self._files(split)
    share = process_share(len(files.paths))
    paths = np.array(files.paths, dtype=object)[share].astype(str)
    labels = np.array(files.labels, np.int32)[share]
    ds = tf.data.Dataset.from_tensor_slices({"path": paths, "label": labels})
    if shuffle:  # File order first, so the shuffle buffer mixes classes from the start.
      ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    return _read_files(ds)

  def full_dataset(self, split: str) -> tf.data.Dataset:
    """The whole split in its listing order."""
    files = self._files(split)
    return _read_files(tf.data.Dataset.from_tensor_slices(
        {"path": np.array(files.paths, dtype=str), "label": np.array(files.labels, np.int32)}))

  def labels(self, split: str) -> np.ndarray:
    return np.array(self._files(split).labels, np.int32)


def _read_files(ds: tf.data.Dataset) -> tf.data.Dataset:
  """{'path', 'label'} -> {'image': the file's bytes, 'label'}."""
  return ds.map(lambda e: {"image": tf.io.read_file(e["path"]), "label": e["label"]},
                num_parallel_calls=tf.data.AUTOTUNE)


SPLIT_FOLDERS = ("train", "test", "val", "validation")


class FolderSource(_FileSource):
  """torchvision's ImageFolder layout: root/<class>/<image>; or a flat folder of images
  (unlabelled, label -1, for pretraining only). If root/<split> exists (e.g. root/train,
  root/test), the split is read from there, else every split is the whole root; every
  split folder must hold the same class folders. Local or gs://."""

  def __init__(self, root):
    self.root = storage.path(root)
    if not self.root.is_dir():
      raise DatasetNotFoundError(
          f"Image folder {str(self.root)!r} does not exist (config.data_dir).")
    self._cache: dict[str, FileList] = {}
    self.classes = self._class_names(self._split_root("train"))
    self.num_classes = len(self.classes)
    for split in SPLIT_FOLDERS:  # Before any training: a mismatch would shift the labels.
      if (self.root / split).is_dir():
        self._check_same_classes(self._split_root(split))

  def _split_root(self, split: str) -> epath.Path:
    candidate = self.root / split
    return candidate if candidate.is_dir() else self.root

  @staticmethod
  def _class_names(folder: epath.Path) -> list[str]:
    # The name test first: on gs:// each is_dir() is a request.
    return sorted(d.name for d in folder.iterdir()
                  if d.name not in SPLIT_FOLDERS and d.is_dir())

  def _check_same_classes(self, folder: epath.Path) -> None:
    """DatasetNotFoundError naming the classes each side lacks, if `folder` holds other
    class folders than the training split's (labels are indices into self.classes)."""
    train_folder = self._split_root("train")
    if folder == train_folder:
      return
    found = self._class_names(folder)
    if found != self.classes:
      raise DatasetNotFoundError(
          f"{train_folder} and {folder} hold different class folders: "
          f"{folder} lacks {_listed(sorted(set(self.classes) - set(found)))}; "
          f"{train_folder} lacks {_listed(sorted(set(found) - set(self.classes)))}. "
          f"Every split folder of config.data_dir must hold the same class folders.")

  def _files(self, split: str) -> FileList:
    if split not in self._cache:
      folder = self._split_root(split)
      self._check_same_classes(folder)
      if self.classes:
        paths, labels = [], []
        for label, name in enumerate(self.classes):
          files = _image_files(folder / name)
          paths += files
          labels += [label] * len(files)
        if not paths:
          raise DatasetNotFoundError(
              f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}: its class folders "
              f"({_listed(self.classes)}) are all empty.")
      else:
        paths = _image_files(folder)
        labels = [-1] * len(paths)
        if not paths:
          raise DatasetNotFoundError(
              f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}, and no class folders.")
      self._cache[split] = _keep_readable(paths, labels, folder)
    return self._cache[split]


class Food101RawSource(_FileSource):
  """The Food-101 archive as unpacked: food-101/images/<class>/<id>.jpg with the official
  splits in food-101/meta/{train,test}.txt and the classes in meta/classes.txt. Local or
  gs://."""

  def __init__(self, root):
    self.root = storage.path(root)
    meta = self.root / "meta" / "classes.txt"
    if not meta.exists():
      raise DatasetNotFoundError(
          f"{meta} not found: config.data_dir must be the unpacked food-101 folder "
          f"(with images/ and meta/).")
    self.classes = [line.strip() for line in meta.read_text().splitlines() if line.strip()]
    self.num_classes = len(self.classes)
    self._cache: dict[str, FileList] = {}

  def _files(self, split: str) -> FileList:
    if split not in self._cache:
      listing = self.root / "meta" / f"{split}.txt"
      if not listing.exists():
        raise ValueError(f"Food-101 has splits 'train' and 'test' (meta/*.txt), not {split!r}.")
      index = {name: i for i, name in enumerate(self.classes)}
      entries = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
      images = str(self.root / "images")  # Joined as strings: 101,000 paths for tf.data.
      paths = [f"{images}/{entry}.jpg" for entry in entries]
      labels = [index[entry.split("/")[0]] for entry in entries]
      self._cache[split] = _keep_readable(paths, labels, listing)
    return self._cache[split]
