"""MoCo v3 on Food-101, the ResNet recipe (Chen, Xie and He, 2021; facebookresearch/moco-v3
README, ResNet-50 100 epochs), for a TPU v3-8 / v4-8 or 8 GPUs:

  python main.py --config=configs/food101_mocov3.py --workdir=gs://BUCKET/mocov3

ResNet-50; projector 3 layers 4096 -> 256 (last BatchNorm without affine), predictor 2
layers 4096 -> 256; momentum encoder and projector with momentum 0.99 -> 1 by cosine;
symmetric InfoNCE at temperature 1.0, each device's queries against the keys of all
devices; LARS (BatchNorm and biases excluded) lr 0.6 x batch / 256, weight decay 1e-6, 10
warm-up epochs then cosine; BYOL's augmentations. 100 epochs, batch 1024 (the paper's 4096;
lr scales linearly).
"""

from configs import food101_byol


def get_config():
  config = food101_byol.get_config()  # Food-101, bfloat16, LARS, BYOL's augmentations.
  config.method = "mocov3"
  config.num_epochs = 100
  config.mocov3.temperature = 1.0
  config.mocov3.base_target_momentum = 0.99
  config.optimizer.base_learning_rate = 0.6
  config.optimizer.weight_decay = 1e-6
  return config
