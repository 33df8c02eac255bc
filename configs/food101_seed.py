"""SimCLR on Food-101 as the PyTorch post this project began from ran it (SGD, batch 64).

The seed document's run, parameter for parameter (shared/seed/simclr_food101_post.txt).

ResNet-50, head 2048-512-128 (no BatchNorm), image 256, batch 64, temperature 0.5, 100
epochs, SGD lr 0.03 momentum 0.9 weight decay 1e-4 on every parameter, cosine over epochs
(CosineAnnealingLR(T_max=100) stepped per epoch, no warm-up), torchvision augmentations with
blur on every view (kernel 10% of the image size, odd; sigma in [0.1, 2.0]), ImageNet
mean/std, and each view through the model separately (model(x1), model(x2)).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "food101"
  config.compute_dtype = "bfloat16"  # Mixed precision on TPU and GPU.
  config.augment.image_size = 256
  config.augment.color_jitter_strength = 0.5  # ColorJitter(0.4, 0.4, 0.4, 0.1).
  config.augment.blur_probability = 1.0
  config.simclr.head_widths = (512, 128)
  config.simclr.head_batch_norm = False
  config.simclr.forward_views_separately = True
  config.simclr.temperature = 0.5
  config.batch_size = 64
  config.num_epochs = 100
  config.optimizer.name = "sgd"
  config.optimizer.base_learning_rate = 0.03
  config.optimizer.lr_scaling = "none"
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.optimizer.exclude_bn_and_bias = False
  config.optimizer.warmup_epochs = 0.0
  config.optimizer.schedule_unit = "epoch"
  return config
