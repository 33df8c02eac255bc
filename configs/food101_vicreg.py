"""VICReg on Food-101 (Bardes, Ponce and LeCun, 2022; facebookresearch/vicreg), for a TPU
v3-8 / v4-8 or 8 GPUs:

  python main.py --config=configs/food101_vicreg.py --workdir=gs://BUCKET/vicreg

ResNet-50; expander 8192-8192-8192; invariance 25, variance 25, covariance 1, variance and
covariance over the global batch; LARS (BatchNorm and biases excluded) lr 0.2 x batch /
256, weight decay 1e-6, 10 warm-up epochs then cosine; BYOL's augmentations. 100 epochs
(the paper's is 1000), batch 1024 (the paper's 2048; lr scales linearly).
"""

from configs import food101_byol


def get_config():
  config = food101_byol.get_config()  # Food-101, bfloat16, LARS, BYOL's augmentations.
  config.method = "vicreg"
  config.num_epochs = 100
  config.optimizer.base_learning_rate = 0.2
  config.optimizer.weight_decay = 1e-6
  return config
