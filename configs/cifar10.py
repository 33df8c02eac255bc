"""SimCLR on CIFAR-10 with the paper's CIFAR recipe (Appendix B.9): 500 epochs, batch 1024.

Small-image stem, no blur, colour strength s = 0.5, 32x32 views, temperature 0.5, batch
1024, LARS, with the official code's details (configs/methods.py: use_simclr_paper_details).
"""

from configs import default, methods


def get_config():
  config = methods.use_simclr_paper_details(default.get_config())
  config.dataset = "cifar10"
  config.train_split = "train"
  config.eval_split = "test"
  config.augment.image_size = 32
  config.augment.color_jitter_strength = 0.5
  config.augment.blur_probability = 0.0
  config.augment.eval_crop_fraction = 1.0
  config.model.small_image_stem = True
  config.simclr.temperature = 0.5
  config.batch_size = 1024
  config.num_epochs = 500
  config.optimizer.base_learning_rate = 1.0
  config.optimizer.lr_scaling = "linear"
  return config
