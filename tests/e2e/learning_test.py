"""Every method still learns: a short demo run (CI's stand-in for the full demos, which
`make check-demos` runs) pretrains on 80% of the digits' training split and must beat the
random encoder with 5 labels per class on the other 20% (the validation split: the test split
is never used here) by a margin.

Each margin floor sits well below what the run gives on this machine (in `MARGINS`' comments),
leaving room for the rounding of other processors' XLA code; a method that stops learning
falls to about 0.
"""

import pytest

from configs import demo
from simclr_jax.stages import linear_eval, pretrain

# method -> (pretraining steps, the least 5-label margin over random init in points / 100).
# Seed 0, validation split, this machine, 2026-12-03 (the random encoder: 0.658): at 100
# steps SimCLR +20.4 (linear 0.967), VICReg +17.3 (0.956), MoCo v3 +7.9, BYOL -2.2 (its 42
# warm-up steps and a slow start), so those two run longer: MoCo v3 +11.0 at 200 steps
# (linear 0.922), BYOL +6.3 at 250 (0.919). Each floor is about half the margin measured.
CHECKS = {"simclr": (100, 0.10), "vicreg": (100, 0.08), "mocov3": (200, 0.05),
          "byol": (250, 0.03)}


def learning_config(method: str):
  """The demo of `method` on the validation split, its CHECKS steps, a lean evaluation."""
  steps = CHECKS[method][0]
  config = demo.get_config(f"{method},validation")
  config.num_train_steps = steps
  config.checkpoint_every_steps = steps
  config.linear_eval.update(tsne_points=0, few_shot_trials=3)
  return config


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(CHECKS))
def test_a_short_demo_beats_the_random_encoder_with_5_labels(method, tmp_path):
  config = learning_config(method)
  pretrain.pretrain(config, str(tmp_path))
  results = linear_eval.evaluate(config, str(tmp_path))
  margin = results["top1_5shot"] - results["random_init_top1_5shot"]
  print(f"{method}: 5-label {results['top1_5shot']:.3f} vs random "
        f"{results['random_init_top1_5shot']:.3f}, margin {100 * margin:+.1f}, "
        f"linear {results['top1']:.3f}")
  assert margin >= CHECKS[method][1], results
