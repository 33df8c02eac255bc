"""benchmarks/check_demos.py without running a demo: the config argument of each model and
split, the verdict on a demo's JSON (common targets, SimCLR's ResNet floors) and the table."""

import pytest

from benchmarks import check_demos
from configs import demo

# SimCLR on the ViT, validation split, seed 0 (docs/demo_results.md: "The ViT demo"),
# linear_eval.json's fields that the check reads.
VIT_VALIDATION = {"num_eval_examples": 270, "top1": 0.9593, "top1_5shot": 0.8304,
                  "random_init_top1_5shot": 0.5926, "knn_top1_5shot": 0.7570,
                  "random_init_knn_top1_5shot": 0.2844}


@pytest.mark.parametrize("method, model, split, arg, name, train_split", [
    ("simclr", "resnet", "test", "simclr", "resnet", "train"),
    ("byol", "vit", "test", "byol,vit", "vit", "train"),
    ("mocov3", "vit", "validation", "mocov3,validation,vit", "vit", "train_without_validation"),
    ("vicreg", "resnet", "validation", "vicreg,validation", "resnet",
     "train_without_validation")])
def test_config_arg_picks_the_model_and_split(method, model, split, arg, name, train_split):
  assert check_demos.config_arg(method, model, split) == arg
  config = demo.get_config(arg)
  assert (config.method, config.model.name, config.train_split, config.eval_split) == (
      method, name, train_split, split)


def _linear(**changes):
  return {"linear_eval": {**VIT_VALIDATION, **changes}}


def test_the_vit_validation_run_passes():
  row = check_demos.score("simclr", "vit", "validation", 0, _linear(), 12.4, True)
  assert row["misses"] == []
  assert row["margin_5shot"] == pytest.approx(0.2378)
  assert row["knn_margin_5shot"] == pytest.approx(0.4726)


def test_simclrs_floors_are_the_resnets_on_test():
  # 0.959 linear and 0.830 with 5 labels: under SimCLR's ResNet floors (0.97, 0.86), over the
  # common targets.
  linear = _linear(num_eval_examples=450)
  resnet = check_demos.score("simclr", "resnet", "test", 0, linear, 1.0, True)
  assert resnet["misses"] == ["top1 < 0.97", "top1_5shot < 0.86"]
  assert check_demos.score("simclr", "vit", "test", 0, linear, 1.0, True)["misses"] == []
  assert check_demos.score("byol", "resnet", "test", 0, linear, 1.0, True)["misses"] == []


def test_common_targets_and_split_size():
  row = check_demos.score("byol", "vit", "validation", 0,
                          _linear(top1=0.949, top1_5shot=0.69), 1.0, True)
  assert row["misses"] == ["linear top-1 < 0.95", "5-label margin < 10"]
  row = check_demos.score("byol", "vit", "test", 0, _linear(), 1.0, False)
  assert row["misses"] == ["not the whole test split, or no tsne.png"]


def test_finetuning_margin_and_labels():
  tuned = {"top1": 0.80, "random_init_top1": 0.61, "num_labelled_examples": 109,
           "num_eval_examples": 270}
  row = check_demos.score("vicreg", "vit", "validation", 1, {**_linear(), "finetune": tuned},
                          1.0, True)
  assert row["finetune_margin"] == pytest.approx(0.19)
  assert row["misses"] == ["fine-tuning margin < 20"]
  # 109 labels are 10% of train_without_validation, not of train (136).
  row = check_demos.score("vicreg", "vit", "test", 1, {
      **_linear(num_eval_examples=450), "finetune": {**tuned, "num_eval_examples": 450}},
                          1.0, True)
  assert row["misses"] == ["fine-tuning did not use 10% of the labels and the test split",
                           "fine-tuning margin < 20"]


def test_table_names_the_model():
  rows = [check_demos.score("simclr", "vit", "validation", 0, _linear(), 12.4, True),
          check_demos.score("byol", "vit", "validation", 0, _linear(top1=0.9), 3.0, True)]
  lines = check_demos.table(rows).splitlines()
  assert lines[0].startswith("| method | model | seed | linear top-1 |")
  assert lines[2] == ("| simclr | vit | 0 | 0.959 | 0.830 | 0.593 | +23.8 | - | - | - | "
                      "12.4 | yes |")
  assert lines[3].endswith("| 3.0 | NO: linear top-1 < 0.95 |")
  assert all(line.count("|") == lines[0].count("|") for line in lines)
