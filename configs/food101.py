"""SimCLR on Food-101 with the paper's ImageNet recipe (ResNet-50), for a TPU v3-8 / v4-8.

SimCLR's ImageNet recipe (google-research/simclr README.md:100-107, "the default
hyperparameters in our paper"), sized for a TPU v3-8 / v4-8.

ResNet-50; LARS (weight decay 1e-4, trust coefficient 1e-3, BatchNorm and biases excluded),
10 warm-up epochs then cosine, lr = 0.075 * sqrt(batch) (the square-root scaling), 100
epochs, temperature 0.1, 3-layer projection head with BatchNorm (SimCLR v2), both views in
one pass, blur with p = 0.5, colour s = 1.0; and the official code's details
(configs/methods.py: use_simclr_paper_details): zero-init residual BatchNorm, its loss scale
(sum over both views), the online probe kept out of weight decay and LARS, raw [0, 1]
input. Batch 1024 (the README's 4096). Every value with its source: docs/recipes.md.
"""

from configs import default, methods


def get_config():
  config = methods.use_simclr_paper_details(default.get_config())
  config.dataset = "food101"
  config.compute_dtype = "bfloat16"  # Mixed precision on TPU and GPU.
  config.train_split = "train"  # 75,750 images.
  config.eval_split = "validation"  # 25,250 images.
  config.batch_size = 1024  # 128 images (256 views) per core on 8 TPU cores.
  config.num_epochs = 100
  config.optimizer.weight_decay = 1e-4  # README.md:103 (1e-6, tf2/run.py's default, is v1's).
  return config
