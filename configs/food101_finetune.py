"""Fine-tuning a Food-101 encoder with 1%, 10% or all of the labels (SimCLR v2's protocols).

  python main.py --config=configs/food101_finetune.py:10pct --workdir=/tmp/simclr \
      --mode=finetune
  python main.py --config=configs/food101_finetune.py:byol,1pct --workdir=/tmp/byol ...

The argument is `METHOD,PROTOCOL`, each optional: the pretraining config it builds on
(SimCLR's configs/food101.py when no method is named, else configs/food101_<method>.py, so
that the encoder matches the checkpoint) and `1pct` or `10pct` (default `10pct`); `100pct`
uses all labels.

SimCLR v2 (Chen et al., 2020b, Section 3 and Appendix B): the classifier on the first layer
of the projection head with 1% and 10% of the labels, on the encoder (the head's input) with
100% (the paper's Section 4; the official code's ft_proj_selector), fine-tuned with the
encoder; LARS with lr 0.005 * sqrt(batch) = 0.16 at batch 1024, no weight decay, no warm-up,
random crops and flips only, global BatchNorm; 60 epochs with 1% of the labels, 30 with 10%
(and 100%). The classifier starts at zero and stays out of LARS's trust ratio
(configs/default.py: finetune.optimizer.exclude_patterns), as the official code keeps its
supervised head out. The labelled part is stratified (every class keeps its share, at least
one image: 1% of Food-101's 750 training images per class is round(7.5) = 8, 808 in all;
10% is 75 per class, 7,575), drawn from config.seed. Top-1 / top-5 on all 25,250
`validation` images after every epoch.

Every method's encoder is fine-tuned with this one protocol, so that methods compare under
the same one; BYOL's and VICReg's own semi-supervised protocols differ (SGD on the encoder,
no projection head; docs/recipes.md), and MoCo v3 publishes none for ResNets.
"""

import importlib

from configs import arguments, food101, methods

PROTOCOLS = {"1pct": (0.01, 60), "10pct": (0.1, 30), "100pct": (1.0, 30)}
ARGS = arguments.Args(arguments.Part("METHOD", methods.NAMES, default="simclr"),
                      arguments.Part("PROTOCOL", tuple(PROTOCOLS), default="10pct"))


def get_config(arg: str | None = None):
  method, protocol = ARGS.parse(arg)
  if method != "simclr":
    config = importlib.import_module(f"configs.food101_{method}").get_config()
  else:
    config = food101.get_config()
  fraction, epochs = PROTOCOLS[protocol]
  block = config.finetune
  block.label_fraction = fraction
  block.epochs = epochs
  block.from_head_layer = fraction < 1  # From the head's input with all labels.
  block.batch_size = 1024
  block.optimizer.name = "lars"
  block.optimizer.base_learning_rate = 0.005
  block.optimizer.lr_scaling = "sqrt"
  block.optimizer.weight_decay = 0.0
  block.optimizer.warmup_epochs = 0.0
  block.random_init_baseline = False
  return config
