"""Linear and kNN evaluation of a Food-101 encoder, with its method's own probe protocol.

  python main.py --config=configs/food101_linear.py --workdir=/tmp/simclr --mode=linear_eval
  python main.py --config=configs/food101_linear.py:byol --workdir=/tmp/byol --mode=linear_eval

The argument is the method (SimCLR when unset): the config builds on that method's
pretraining config (configs/food101.py, configs/food101_<method>.py), so the encoder
matches its checkpoint, and sets that method's own linear-probe protocol (PROTOCOLS; every
value with its official source in docs/recipes.md). All train a linear classifier on the
frozen encoder (BatchNorm in inference mode) with fresh random crops and flips of the 75,750
`train` images every step, cosine decay to 0 without warm-up, and report top-1/top-5 (and
kNN) on all 25,250 `validation` images (Food-101's test set), at the last epoch.

Where the official batch is larger than 1024 (SimCLR's and BYOL's 4096) the rate scales
with the batch as its rule says; the cosine moves every step (MoCo v3's and VICReg's move
per epoch).
"""

import importlib

from configs import arguments, food101, methods

# method -> (epochs, batch, learning_rate, lr_scaling, nesterov, weight_decay).
PROTOCOLS = {
    # Nesterov SGD, 0.1 x B/256, weight decay 1e-6, 90 epochs (simclr README.md:136-140).
    "simclr": (90, 1024, 0.1, "linear", True, 1e-6),
    # Nesterov SGD, 0.2 x B/256, no weight decay, 80 epochs (byol/configs/eval.py:29-45).
    "byol": (80, 1024, 0.2, "linear", True, 0.0),
    # SGD (not Nesterov), 0.1 x B/256, no weight decay, 90 epochs, batch 1024
    # (moco-v3 main_lincls.py's defaults, which CONFIG.md's R50 command keeps).
    "mocov3": (90, 1024, 0.1, "linear", False, 0.0),
    # SGD (not Nesterov), lr 0.02 unscaled, weight decay 1e-6, 100 epochs, batch 256
    # (vicreg README.md:91, evaluate.py defaults).
    "vicreg": (100, 256, 0.02, "none", False, 1e-6),
}


ARGS = arguments.Args(arguments.Part("METHOD", methods.NAMES, default="simclr"))


def get_config(arg: str | None = None):
  method, = ARGS.parse(arg)
  if method == "simclr":
    config = food101.get_config()
  else:
    config = importlib.import_module(f"configs.food101_{method}").get_config()
  epochs, batch, learning_rate, lr_scaling, nesterov, weight_decay = PROTOCOLS[method]
  config.eval_split = "validation"
  block = config.linear_eval
  block.precompute_features = False  # Augmented images through the frozen encoder.
  block.epochs = epochs
  block.batch_size = batch
  block.learning_rate = learning_rate
  block.lr_scaling = lr_scaling
  block.momentum = 0.9
  block.nesterov = nesterov
  block.weight_decay = weight_decay
  block.knn_k = 200
  block.knn_temperature = 0.07
  block.tsne_points = 5000
  return config
