"""Your own images (a folder on disk or gs://), with a method's Food-101 recipe.

  python main.py --config=configs/folder.py --config.data_dir=/data/my_images --workdir=/tmp/mine
  python main.py --config=configs/folder.py:byol ...      # BYOL's recipe (mocov3, vicreg too)

The folder, in one of three layouts (dataset='folder'):
  1. DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg: the splits as given (eval_split
     'test'; a DIR/validation/ folder works with --config.eval_split=validation).
  2. DIR/<class>/*.jpg, no split folders: add --config.holdout_fraction=0.1 (to every stage,
     pretraining included, so it never sees the held-out images): about 10% of each class,
     chosen by a hash of each file's path under DIR (the same on every run and host; a new
     image moves no other, but in a class too small for the hash to hold out any), is the
     'test' split, the rest 'train'. Without it
     the run stops with one line naming the fixes; --config.eval_split=train instead
     evaluates on the training images (a warning says the scores are optimistic).
  3. DIR/*.jpg, no class folders: unlabelled, for pretraining (and export) only;
     linear_eval, finetune and --config.online_probe=True stop with one line.
JPEG, PNG, GIF and BMP files; empty, truncated or non-image files are skipped and counted.

Then, in the same workdir (each later stage takes the model from the checkpoint):
  python main.py --config=configs/folder.py --config.data_dir=DIR --workdir=W --mode=linear_eval
  python main.py --config=configs/folder.py --config.data_dir=DIR --workdir=W --mode=finetune
  python main.py --config=configs/folder.py --workdir=W --mode=export
What to expect: pretraining logs the loss every 50 steps and checkpoints to W/checkpoints
(rerun the same command to resume); linear_eval prints top-1 / top-5 of a linear probe and
kNN on the 'test' split (W/linear_eval.json, W/tsne.png); finetune trains the whole encoder
with all labels (--config.finetune.label_fraction=0.1 for 10% of them) and prints top-1 /
top-5 (W/finetune.json); export writes W/export/encoder.safetensors and encoder.json.

Sized for a few thousand images on one GPU or a TPU host (fields as configs/food101.py, or
configs/food101_<method>.py, otherwise):
- batch 256 (the recipe's 1024 would leave 2-3 steps per epoch of 3,000 images, and drop
  up to 1,023 images an epoch; SimCLR's square-root learning-rate scaling is made for
  small batches);
- 200 epochs (small sets need more passes for the same number of steps: 3,000 images make
  11 steps an epoch, 2,300 steps in all);
- probes and fine-tuning at batch 256 and kNN with k = 20 (classes of tens of images);
  fine-tuning with all labels for 30 epochs (SimCLR v2's 100% protocol).
ResNet-50 at 224 px by default; with a few hundred to a few thousand images a ResNet-18
overfits less and trains about 2x faster: --config.model.depth=18 (pretraining only).
"""

import importlib

from configs import arguments, methods

ARGS = arguments.Args(arguments.Part("METHOD", methods.NAMES, default="simclr"))


def get_config(arg: str | None = None):
  method, = ARGS.parse(arg)
  # The config each method builds on: its Food-101 recipe.
  recipe = "food101" if method == "simclr" else f"food101_{method}"
  config = importlib.import_module(f"configs.{recipe}").get_config()
  config.dataset = "folder"
  config.train_split = "train"
  config.eval_split = "test"
  config.holdout_fraction = 0.0  # Layout 2 needs it set: see above.
  config.batch_size = 256
  config.num_epochs = 200
  config.linear_eval.batch_size = 256
  config.linear_eval.knn_k = 20
  config.finetune.batch_size = 256
  config.finetune.epochs = 30
  config.finetune.label_fraction = 1.0
  config.finetune.from_head_layer = False  # SimCLR v2's choice with all labels.
  return config
