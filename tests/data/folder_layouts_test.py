"""A user's own folder in its three layouts (split folders, class folders split by
holdout_fraction, flat), and every way it cannot serve a stage: one line each, before
anything is built; TFDS names that do not exist."""

import shutil

import numpy as np
import pytest
import tensorflow as tf
from etils import epath

from configs import folder
from simclr_jax import config_checks
from simclr_jax.data import folder_sources, input_pipeline, sources, subsets
from simclr_jax.stages import finetune, linear_eval, pretrain

CLASSES = ("cat", "dog", "owl")


def _write_png(path, value):
  """An 8x8 PNG at `path` (local, ram:// or gs://)."""
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  image = np.full((8, 8, 3), value % 256, np.uint8)
  tf.io.write_file(str(path), tf.io.encode_png(image))


def _class_tree(root, per_class, classes=CLASSES):
  for label, name in enumerate(classes):
    for i in range(per_class[label] if isinstance(per_class, tuple) else per_class):
      _write_png(f"{root}/{name}/{i:03d}.png", 60 * label + i)


def _flat(root, count=4):
  for i in range(count):
    _write_png(f"{root}/{i}.png", 10 * i)


def _config(data_dir, **overrides):
  config = folder.get_config()
  config.data_dir = str(data_dir)
  config.update(overrides)
  return config


def _one_line_error(error_type, call, *args, **kwargs) -> str:
  with pytest.raises(error_type) as raised:
    call(*args, **kwargs)
  message = str(raised.value)
  assert "\n" not in message, message
  return message


def _names(files):
  return sorted("/".join(p.rsplit("/", 2)[-2:]) for p in files.paths)


# ------------------------------------------------------------------- layout 1: splits


def test_split_folders_are_the_splits_and_a_missing_one_is_named(tmp_path):
  _class_tree(tmp_path / "train", 3)
  _class_tree(tmp_path / "test", 2)
  source = folder_sources.FolderSource(str(tmp_path))
  assert source.layout == "splits" and source.splits() == ("test", "train")
  assert source.num_examples("train") == 9 and source.num_examples("test") == 6
  assert sorted(source.labels("test")) == [0, 0, 1, 1, 2, 2]
  # #7: the default eval_split ('validation') names the split folders found, not classes.
  message = _one_line_error(sources.DatasetNotFoundError, input_pipeline.create_source,
                            _config(tmp_path, eval_split="validation"), "linear_eval")
  assert message == (f"no split folder 'validation' under {tmp_path} (found: test, train): "
                     f"set --config.eval_split=test.")
  message = _one_line_error(sources.DatasetNotFoundError, input_pipeline.create_source,
                            _config(tmp_path, train_split="training"), "pretrain")
  assert message.endswith("set --config.train_split=train.")
  input_pipeline.create_source(_config(tmp_path), "linear_eval")  # eval_split 'test'.


# ------------------------------------------------------------ layout 2: class folders


def test_holdout_splits_each_class_and_keeps_one_on_each_side(tmp_path):
  _class_tree(tmp_path, (40, 2, 1))
  (tmp_path / ".ipynb_checkpoints").mkdir()  # Hidden: not a class.
  source = folder_sources.FolderSource(str(tmp_path), holdout_fraction=0.25)
  assert source.layout == "classes" and source.splits() == ("train", "test")
  assert source.classes == list(CLASSES)
  train, test = source.labels("train"), source.labels("test")
  assert len(train) + len(test) == 43
  assert not set(_names(source._files("train"))) & set(_names(source._files("test")))
  held = np.bincount(test, minlength=3)
  assert 4 <= held[0] <= 18  # About a quarter of 40 (each file's hash decides).
  assert held[1] == 1 and held[2] == 0  # Two: one each side. One: kept for training.
  assert np.bincount(train, minlength=3)[1:].tolist() == [1, 1]
  # Nothing else is a split of this folder.
  message = _one_line_error(sources.DatasetNotFoundError, input_pipeline.create_source,
                            _config(tmp_path, holdout_fraction=0.25, eval_split="validation"),
                            "linear_eval")
  assert message.endswith("into 'train' and 'test', not 'validation': set "
                          "--config.eval_split=test.")


def test_holdout_is_fixed_by_the_paths_under_the_folder(tmp_path):
  """The same files give the same split, wherever the folder is; a new file moves no
  other (in a class large enough for the hash alone to hold some out)."""
  _class_tree(tmp_path / "a", (30, 30, 30))

  def held_out(root):
    return _names(folder_sources.FolderSource(str(root), 0.2)._files("test"))

  first = held_out(tmp_path / "a")
  assert first == held_out(tmp_path / "a")
  shutil.copytree(tmp_path / "a", tmp_path / "moved")
  assert held_out(tmp_path / "moved") == first
  _write_png(tmp_path / "a" / "cat" / "new.png", 7)
  _write_png(tmp_path / "a" / "owl" / "new.png", 8)
  after = held_out(tmp_path / "a")
  assert [name for name in after if not name.endswith("new.png")] == first


def test_holdout_mask_is_per_key_with_each_class_s_minimum():
  keys = [f"c{label}/{i}.jpg" for label, size in enumerate((200, 3, 1)) for i in range(size)]
  labels = np.repeat([0, 1, 2], (200, 3, 1))
  held = subsets.holdout_mask(keys, labels, 0.1)
  assert 10 <= held[:200].sum() <= 30  # Binomial(200, 0.1): mean 20, sd 4.2.
  assert 1 <= held[200:203].sum() <= 2 and not held[203]
  np.testing.assert_array_equal(held, subsets.holdout_mask(keys, labels, 0.1))
  # Shuffled keys: each key keeps its side.
  order = np.random.default_rng(0).permutation(len(keys))
  np.testing.assert_array_equal(
      subsets.holdout_mask([keys[i] for i in order], labels[order], 0.1), held[order])
  # Nearly everything held out: each class of two or more still keeps one for training.
  most = subsets.holdout_mask(keys, labels, 0.999)
  assert [int((~most[labels == c]).sum()) for c in range(3)] == [1, 1, 1]


def test_class_folders_without_holdout_refuse_evaluation_with_both_fixes(tmp_path):
  _class_tree(tmp_path, 3)
  for stage in ("pretrain", "linear_eval", "finetune"):
    message = _one_line_error(sources.DatasetNotFoundError, input_pipeline.create_source,
                              _config(tmp_path), stage)
    assert message == (
        f"data_dir {tmp_path} has class folders but no 'test' folder: set "
        f"--config.holdout_fraction=0.1 to hold out 10% of each class, or "
        f"--config.eval_split=train to evaluate on the training images.")


def test_evaluating_on_the_training_images_only_when_asked_and_with_a_warning(tmp_path,
                                                                            monkeypatch):
  _class_tree(tmp_path, 3)
  warnings = []
  monkeypatch.setattr(input_pipeline.logging, "warning",
                      lambda message, *args: warnings.append(message % args))
  source = input_pipeline.create_source(_config(tmp_path, eval_split="train"), "linear_eval")
  assert source.num_examples("train") == 9
  assert len(warnings) == 1 and "the scores are optimistic" in warnings[0]
  input_pipeline.create_source(_config(tmp_path, eval_split="train"), "pretrain")
  assert len(warnings) == 1  # Pretraining evaluates nothing.


def test_holdout_over_a_non_local_file_system(ram_root):
  """ram:// goes through epath and tf.io.gfile as gs:// does."""
  _class_tree(f"{ram_root}/mine", (12, 12, 12))
  source = input_pipeline.create_source(
      _config(f"{ram_root}/mine", holdout_fraction=0.25), "linear_eval")
  local = subsets.holdout_mask(
      [f"{c}/{i:03d}.png" for c in CLASSES for i in range(12)], np.repeat([0, 1, 2], 12), 0.25)
  assert source.num_examples("test") == local.sum() and source.num_examples("train") == 36 - (
      local.sum())
  assert all(p.startswith(f"{ram_root}/mine/") for p in source._files("test").paths)
  assert len(list(source.local_dataset("test", False, 0))) == local.sum()


# --------------------------------------------------------------------- layout 3: flat


@pytest.mark.parametrize("stage", ["linear_eval", "finetune"])
def test_a_stage_that_needs_labels_refuses_a_flat_folder(tmp_path, stage):
  _flat(tmp_path)
  message = _one_line_error(sources.DatasetNotFoundError, input_pipeline.create_source,
                            _config(tmp_path), stage)
  assert message == (f"{stage} needs labels, but data_dir {tmp_path} has no class folders (4 "
                     f"images directly in it): put each class in its own folder "
                     f"({tmp_path}/<class>/*.jpg).")


def test_pretraining_takes_a_flat_folder_unless_the_online_probe_needs_labels(tmp_path):
  _flat(tmp_path)
  source = input_pipeline.create_source(_config(tmp_path), "pretrain")
  assert source.layout == "flat" and source.num_examples("train") == 4
  message = _one_line_error(sources.DatasetNotFoundError, input_pipeline.create_source,
                            _config(tmp_path, online_probe=True), "pretrain")
  assert message.startswith("config.online_probe=True needs labels, but data_dir ")
  assert message.endswith(", or set --config.online_probe=False.")


def test_flat_split_folders_have_no_labels_either(tmp_path):
  _flat(tmp_path / "train", 3)
  _flat(tmp_path / "test", 2)
  message = _one_line_error(sources.DatasetNotFoundError, input_pipeline.create_source,
                            _config(tmp_path), "linear_eval")
  assert f"data_dir {tmp_path / 'train'} has no class folders (3 images" in message


@pytest.mark.parametrize("layout", ["splits", "flat"])
def test_holdout_fraction_is_refused_where_there_are_no_class_folders_to_split(tmp_path,
                                                                              layout):
  if layout == "splits":
    _class_tree(tmp_path / "train", 2)
    _class_tree(tmp_path / "test", 1)
  else:
    _flat(tmp_path)
  message = _one_line_error(sources.DatasetNotFoundError, input_pipeline.create_source,
                            _config(tmp_path, holdout_fraction=0.1), "pretrain")
  assert message.startswith("config.holdout_fraction=0.1 holds out part of each class folder")
  assert "drop --config.holdout_fraction" in message


# ------------------------------------------------------------ fractions and sizes


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
@pytest.mark.parametrize("stage", [pretrain, linear_eval, finetune])
def test_holdout_fraction_out_of_range_is_a_config_error(value, stage):
  config = folder.get_config()
  config.holdout_fraction = value
  message = _one_line_error(config_checks.ConfigError, stage.check_config, config)
  assert message.startswith("holdout_fraction must be in [0, 1) (0.1 holds out 10% of each "
                            "class folder), got ")


def test_few_shot_labels_per_class_are_at_most_the_smallest_class_s(tmp_path):
  _class_tree(tmp_path / "train", (5, 3, 4))
  _class_tree(tmp_path / "test", 1)
  config = _config(tmp_path)
  config.linear_eval.few_shot_per_class = 4
  message = _one_line_error(config_checks.ConfigError, input_pipeline.create_source, config,
                            "linear_eval")
  assert message == ("linear_eval.few_shot_per_class=4 is more than the 3 training images of "
                     "class 'dog' (the smallest class of 'train'): set it to at most 3, or 0 "
                     "for no few-shot probe.")
  config.linear_eval.few_shot_per_class = 3
  input_pipeline.create_source(config, "linear_eval")


def test_a_finetuning_batch_larger_than_the_labelled_part_warns(monkeypatch):
  """A warning, not an error (subsets.warn_if_batch_repeats says why)."""
  warnings = []
  monkeypatch.setattr(subsets.logging, "warning",
                      lambda message, *args: warnings.append(message % args))
  digits = sources.DigitsSource()
  subset = subsets.labelled_subset(digits, "train", 0.01, seed=0)  # 1 per class: 10.
  subsets.warn_if_batch_repeats(subset, "train", 10)
  assert not warnings
  subsets.warn_if_batch_repeats(subset, "train", 1024)
  assert warnings == [(
      "finetune.batch_size=1024 is larger than the 10 labelled examples of 'train': every "
      "batch repeats each about 102 times (other crops) and an epoch is one step. A batch of "
      "at most 10 takes more, distinct steps.")]


# --------------------------------------------------------------------- dataset names


def test_a_malformed_tfds_name_is_one_line_with_the_close_name():
  config = folder.get_config()
  config.dataset = "food-101"
  message = _one_line_error(sources.DatasetNotFoundError, input_pipeline.create_source, config)
  assert message.startswith("Unknown dataset 'food-101': config.dataset is a TFDS name")
  assert message.endswith("did you mean food101?")


def test_an_unknown_tfds_name_is_one_line_with_a_few_close_matches():
  config = folder.get_config()
  config.dataset = "food102"
  message = _one_line_error(sources.DatasetNotFoundError, input_pipeline.create_source, config)
  assert message.startswith("Unknown dataset 'food102': ") and "food101" in message
  assert message.count(" or ") <= sources.MAX_SUGGESTIONS and len(message) < 300
  config.dataset = "qqqqzzzz"
  message = _one_line_error(sources.DatasetNotFoundError, input_pipeline.create_source, config)
  assert "did you mean" not in message and message.endswith("food101_raw.")


def test_an_unknown_tfds_config_is_one_line():
  config = folder.get_config()
  config.dataset = "mnist/no_such_config"
  message = _one_line_error(sources.DatasetNotFoundError, input_pipeline.create_source, config)
  assert message.startswith("TFDS dataset 'mnist/no_such_config' (config.dataset): ")


def test_holdout_and_the_label_check_on_gs(fake_gcs):
  """gs:// through storage (epath, tf.io.gfile), on the in-process fake."""
  with fake_gcs.environ():
    bucket = fake_gcs.bucket_url
    _class_tree(f"{bucket}/mine", (6, 6, 6))
    _flat(f"{bucket}/flat", 2)
    source = input_pipeline.create_source(
        _config(f"{bucket}/mine", holdout_fraction=0.25), "finetune")
    local = subsets.holdout_mask(
        [f"{c}/{i:03d}.png" for c in CLASSES for i in range(6)], np.repeat([0, 1, 2], 6), 0.25)
    assert _names(source._files("test")) == sorted(
        f"{c}/{i:03d}.png" for k, (c, i) in enumerate(
            (c, i) for c in CLASSES for i in range(6)) if local[k])
    assert len(list(source.local_dataset("train", False, 0))) == 18 - local.sum()
    message = _one_line_error(sources.DatasetNotFoundError, input_pipeline.create_source,
                              _config(f"{bucket}/flat"), "linear_eval")
    assert message.startswith(f"linear_eval needs labels, but data_dir {bucket}/flat has no "
                              f"class folders (2 images directly in it)")
