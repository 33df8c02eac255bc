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
from simclr_jax.data import subsets
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


def _may_be_a_folder(entry: epath.Path) -> bool:
  """A class or split folder: a folder, not hidden (.ipynb_checkpoints, .git). The name
  is tested first: on gs:// each is_dir() is a request."""
  name = entry.name
  return not name.startswith(".") and not name.lower().endswith(IMAGE_EXTENSIONS) and (
      entry.is_dir())


HOLDOUT_SPLITS = ("train", "test")  # The splits a holdout_fraction makes of class folders.


class FolderSource(_FileSource):
  """Image files under `root` (local or gs://), in one of three layouts (`self.layout`):

  - 'splits': root/<split>/<class>/<image>, e.g. root/train and root/test (split folders
    are named train, test, val or validation). Every split folder holds the same class
    folders (checked here, before any training: a mismatch would shift the labels), and a
    split is read only from its own folder.
  - 'classes': root/<class>/<image> (torchvision's ImageFolder). With `holdout_fraction` in
    (0, 1), about that fraction of every class is the split 'test' and the rest 'train',
    chosen by a hash of each file's path under root (`subsets.holdout_mask`), so the same
    on every run and host; without it the one split is 'train', every image.
  - 'flat': root/<image>, no class folders: unlabelled (label -1), for pretraining only;
    every split name reads all of the images.
  """

  def __init__(self, root, holdout_fraction: float = 0.0):
    self.root = storage.path(root)
    if not self.root.is_dir():
      raise DatasetNotFoundError(
          f"Image folder {str(self.root)!r} does not exist (config.data_dir).")
    self.holdout_fraction = holdout_fraction
    self._cache: dict[str, FileList] = {}  # By split.
    self._listings: dict[str, FileList] = {}  # By folder: a flat folder's splits share one.
    # One listing of root: on gs:// each is_dir() is a request, so the names are tested first.
    folders = sorted(d.name for d in self.root.iterdir() if _may_be_a_folder(d))
    self.split_folders = [name for name in folders if name in SPLIT_FOLDERS]
    if self.split_folders:
      self.layout = "splits"
      self._class_root = self.root / ("train" if "train" in self.split_folders
                                      else self.split_folders[0])
      self.classes = self._class_names(self._class_root)
      for split in self.split_folders:  # Before any training: a mismatch shifts the labels.
        self._check_same_classes(self.root / split)
    else:
      self._class_root = self.root
      self.classes = folders
      self.layout = "classes" if folders else "flat"
    self.num_classes = len(self.classes)
    self._check_holdout()

  def _check_holdout(self) -> None:
    fraction = self.holdout_fraction
    if not fraction or self.layout == "classes":
      return
    if self.layout == "splits":
      raise DatasetNotFoundError(
          f"config.holdout_fraction={fraction} holds out part of each class folder, but "
          f"{self.root} has split folders already ({', '.join(self.split_folders)}): drop "
          f"--config.holdout_fraction.")
    raise DatasetNotFoundError(
        f"config.holdout_fraction={fraction} holds out part of each class folder, but "
        f"{self.unlabelled_reason()}, or drop --config.holdout_fraction to pretrain on them.")

  @staticmethod
  def _class_names(folder: epath.Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir()
                  if d.name not in SPLIT_FOLDERS and _may_be_a_folder(d))

  def _check_same_classes(self, folder: epath.Path) -> None:
    """DatasetNotFoundError naming the classes each side lacks, if `folder` holds other
    class folders than the training split's (labels are indices into self.classes)."""
    if folder == self._class_root:
      return
    found = self._class_names(folder)
    if found != self.classes:
      train_folder = self._class_root
      raise DatasetNotFoundError(
          f"{train_folder} and {folder} hold different class folders: "
          f"{folder} lacks {_listed(sorted(set(self.classes) - set(found)))}; "
          f"{train_folder} lacks {_listed(sorted(set(found) - set(self.classes)))}. "
          f"Every split folder of config.data_dir must hold the same class folders.")

  # ------------------------------------------------------------------ splits and labels

  def splits(self) -> tuple[str, ...] | None:
    """The split names this folder has; None for a flat folder (any name: every image)."""
    if self.layout == "splits":
      return tuple(self.split_folders)
    if self.layout == "classes":
      return HOLDOUT_SPLITS if self.holdout_fraction else ("train",)
    return None

  def check_split(self, split: str, field: str | None = None) -> None:
    """DatasetNotFoundError saying how to fix config.<field> (e.g. 'eval_split'), unless
    `split` is one of `splits()`."""
    splits = self.splits()
    if splits is None or split in splits:
      return
    train = field == "train_split"
    if self.layout == "splits":
      fix = ("train" if "train" in splits else splits[0]) if train else next(
          (s for s in ("test", "validation", "val") if s in splits), splits[0])
      raise DatasetNotFoundError(
          f"no split folder {split!r} under {self.root} (found: {', '.join(splits)}): set "
          f"--config.{field or 'eval_split'}={fix}.")
    if self.holdout_fraction:
      raise DatasetNotFoundError(
          f"config.holdout_fraction={self.holdout_fraction} splits the class folders of "
          f"{self.root} into 'train' and 'test', not {split!r}: set "
          f"--config.{field or 'eval_split'}={'train' if train else 'test'}.")
    if train:
      raise DatasetNotFoundError(
          f"data_dir {self.root} has class folders but no {split!r} folder: set "
          f"--config.train_split=train (every image, or with --config.holdout_fraction=0.1 "
          f"all but 10% of each class).")
    raise DatasetNotFoundError(
        f"data_dir {self.root} has class folders but no {split!r} folder: set "
        f"--config.holdout_fraction=0.1 to hold out 10% of each class, or "
        f"--config.eval_split=train to evaluate on the training images.")

  def unlabelled_reason(self) -> str:
    """Why this source has no labels, and the fix: '<folder> has no class folders (N
    images directly in it): put each class in its own folder (...)'."""
    folder = self._class_root
    count = len(_image_files(folder))
    return (f"data_dir {folder} has no class folders ({count} images directly in it): put "
            f"each class in its own folder ({folder}/<class>/*.jpg)")

  def _files(self, split: str) -> FileList:
    if split not in self._cache:
      self.check_split(split)
      if self.layout == "splits":
        self._cache[split] = self._listing(self.root / split)
      elif self.layout == "flat" or not self.holdout_fraction:
        self._cache[split] = self._listing(self.root)
      else:
        self._cache.update(self._holdout_splits())
    return self._cache[split]

  def _listing(self, folder: epath.Path) -> FileList:
    """The readable images of `folder`'s class folders (labelled), or of `folder` itself
    when there are none (unlabelled, -1)."""
    if str(folder) in self._listings:
      return self._listings[str(folder)]
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
    self._listings[str(folder)] = _keep_readable(paths, labels, folder)
    return self._listings[str(folder)]

  def _holdout_splits(self) -> dict[str, FileList]:
    """{'train', 'test'} of the class folders: `subsets.holdout_mask` over each readable
    file's path relative to root ('<class>/<name>'). Unreadable files count as 'train''s."""
    everything = self._listing(self.root)
    keys = ["/".join(p.rsplit("/", 2)[-2:]) for p in everything.paths]
    held = subsets.holdout_mask(keys, np.array(everything.labels), self.holdout_fraction)

    def part(mask, skipped):
      return FileList([p for p, m in zip(everything.paths, mask) if m],
                      [label for label, m in zip(everything.labels, mask) if m], skipped)

    return {"train": part(~held, everything.skipped), "test": part(held, [])}


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

  def splits(self) -> tuple[str, ...]:
    return ("train", "test")

  def _files(self, split: str) -> FileList:
    if split not in self._cache:
      listing = self.root / "meta" / f"{split}.txt"
      if not listing.exists():
        raise DatasetNotFoundError(
            f"Food-101 has splits 'train' and 'test' (meta/*.txt), not {split!r}.")
      index = {name: i for i, name in enumerate(self.classes)}
      entries = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
      images = str(self.root / "images")  # Joined as strings: 101,000 paths for tf.data.
      paths = [f"{images}/{entry}.jpg" for entry in entries]
      labels = [index[entry.split("/")[0]] for entry in entries]
      self._cache[split] = _keep_readable(paths, labels, listing)
    return self._cache[split]
