"""Every Food-101 config against its official recipe (configs/official_recipes.py), and
docs/recipes.md against the same rows."""


import pytest

from configs import official_recipes
from simclr_jax.training import model as model_lib
from tests.support import paths

ROOT = paths.REPO


def _value(config, field):
  for key in field.split("."):
    config = config[key]
  return tuple(config) if isinstance(config, (list, tuple)) else config


@pytest.mark.parametrize("method", sorted(official_recipes.RECIPES))
def test_each_food101_config_holds_its_recipe(method):
  configs = {}
  checked = 0
  for row in official_recipes.RECIPES[method]:
    if row.field is None:
      continue
    if row.stage not in configs:
      configs[row.stage] = official_recipes.config_for(method, row.stage)
    expected = row.expected
    actual = _value(configs[row.stage], row.field)
    if isinstance(expected, float):
      assert actual == pytest.approx(expected, rel=1e-12), (row.stage, row.field)
    else:
      assert actual == expected, (row.stage, row.field)
    checked += 1
  assert checked >= 30  # Every recipe names its fields; a row without one is code.
  assert {"pretrain", "linear"} <= set(configs)


def test_docs_recipes_is_rendered_from_the_rows():
  """`python -m configs.official_recipes > docs/recipes.md` after editing a row."""
  assert (ROOT / "docs" / "recipes.md").read_text() == official_recipes.render_markdown()


def test_every_departure_says_why_and_every_source_names_a_line():
  for method, rows in official_recipes.RECIPES.items():
    for row in rows:
      assert bool(row.why) == row.departs, (method, row.item)
      assert any(c.isdigit() for c in row.source.split(":")[-1]), (method, row.source)


@pytest.mark.parametrize("method", sorted(official_recipes.RECIPES))
def test_each_method_s_linear_protocol_restores_its_checkpoints(method):
  """food101_linear.py:METHOD agrees with the method's pretraining config on every field
  that shapes the model (so its checkpoints restore), and sets the method's own probe."""
  pretraining = official_recipes.config_for(method, "pretrain")
  linear = official_recipes.config_for(method, "linear")
  for field in model_lib.model_fields(pretraining):
    assert _value(linear, field.rstrip(".")) == _value(pretraining, field.rstrip(".")), field
  assert linear.method == official_recipes.METHODS.get(method, method)
  assert not linear.linear_eval.precompute_features


def test_food101_linear_rejects_an_unknown_method():
  from configs import food101_linear  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="METHOD: simclr \\(default\\), byol"):
    food101_linear.get_config("simsiam")
