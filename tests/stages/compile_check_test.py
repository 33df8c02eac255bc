"""The compile check: TPU slice names, the roofline arithmetic, the compiler's out-of-memory
message read, one `Error:` line without libtpu, and (where libtpu is installed) the toy
model's step compiled for a v5e-4."""

import importlib.util
import json
import math

import jax
import pytest

from simclr_jax import config_checks, runtime, sharding, stages
from simclr_jax.stages import compile_check
from simclr_jax.training import pretrain_step
from simclr_jax.training import state as state_lib
from tests.support.helpers import tiny_food101_config

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


@pytest.mark.parametrize("name, chips, topology_name, bounds", [
    ("v4-8", 4, "v4:2x2x1", (2, 2, 1)),
    ("v4-16", 8, "v4:2x2x2", (2, 2, 1)),
    ("v4-32", 16, "v4:2x2x4", (2, 2, 1)),
    ("v4-128", 64, "v4:4x4x4", (2, 2, 1)),
    ("v5p-8", 4, "v5:2x2x1", (2, 2, 1)),
    ("v5p-256", 128, "v5:4x4x8", (2, 2, 1)),
    ("v5e-1", 1, "v5e:1x1", (1, 1, 1)),
    ("v5e-4", 4, "v5e:2x2", (2, 2, 1)),
    ("v5e-8", 8, "v5e:2x4", (2, 4, 1)),
    ("v5e-32", 32, "v5e:4x8", (2, 2, 1)),
    ("v5e-256", 256, "v5e:16x16", (2, 2, 1)),
    ("v6e-8", 8, "v6e:2x4", (2, 4, 1)),
    ("v6e-256", 256, "v6e:16x16", (2, 2, 1)),
])
def test_slice_names_give_their_chips_and_libtpu_topology(name, chips, topology_name, bounds):
  topology = compile_check.parse_topology(name)
  assert (topology.chips, topology.topology_name, topology.chips_per_host_bounds) == (
      chips, topology_name, bounds)
  assert math.prod(int(n) for n in topology_name.split(":")[1].split("x")) == chips
  # Cloud TPU's accelerator type, what libtpu reads from TPU_ACCELERATOR_TYPE.
  assert topology.accelerator_type == name.replace("v5e", "v5litepod")


@pytest.mark.parametrize("name", ["v4-4", "v4-6", "v4-7", "v5e-2", "v5e-12", "v5e-512",
                                  "v3-8", "v5litepod-8", "tpu", ""])
def test_an_unknown_slice_is_one_config_error_naming_the_forms(name):
  with pytest.raises(config_checks.ConfigError) as error:
    compile_check.parse_topology(name)
  assert repr(name) in str(error.value) and "v5e-8" in str(error.value)


def test_the_chip_table_has_the_published_figures():
  # Google's Cloud TPU pages: (HBM GiB, peak bf16 TFLOP/s, HBM GB/s).
  expected = {"v4": (32, 275, 1200), "v5e": (16, 197, 819), "v5p": (95, 459, 2765),
              "v6e": (32, 918, 1638)}
  assert {name: (chip.hbm_bytes / 2**30, chip.peak_bf16_flops / 1e12, chip.hbm_bandwidth / 1e9)
          for name, chip in compile_check.CHIPS.items()} == expected


def test_roofline_takes_the_lower_bound_and_its_mfu():
  # The note's R50 v5e figures: 24.69 GFLOP and 321 MB per view on a 197 TFLOP/s,
  # 819 GB/s chip: compute allows 7,979 views/s, memory 2,551: memory binds.
  bound = compile_check.roofline(24.69e9, 321e6, 197e12, 819e9)
  assert bound["compute_bound_views_per_second"] == pytest.approx(7978.9, abs=0.1)
  assert bound["memory_bound_views_per_second"] == pytest.approx(2551.4, abs=0.1)
  assert bound["views_per_second_bound"] == bound["memory_bound_views_per_second"]
  assert bound["bound_by"] == "memory"
  assert bound["mfu_at_bound"] == pytest.approx(2551.4 / 7978.9, abs=1e-4)
  compute_bound = compile_check.roofline(100e9, 1e6, 200e12, 1000e9)
  assert compute_bound["bound_by"] == "compute"
  assert compute_bound["views_per_second_bound"] == pytest.approx(2000.0)
  assert compute_bound["mfu_at_bound"] == pytest.approx(1.0)


def test_an_out_of_memory_compile_is_a_row_that_says_it_does_not_fit():
  config = tiny_food101_config(batch_size=1024)
  message = "RESOURCE_EXHAUSTED: HLO temporaries (16.29G) exceeds available HBM (15.75G)\nmore"
  summary = compile_check.summarize(compile_check.parse_topology("v5e-4"), config, 1000, 2000,
                                    None, message, 3.0, "TPU v5 lite")
  assert summary["fits"] is False and summary["images_per_chip"] == 256
  assert summary["needed_bytes"] == int(16.29 * 2**30)
  assert summary["error"] == message.splitlines()[0]
  table = compile_check.format_table(summary)
  assert "NO: the compiler needs 16.29 GiB of 15.75 GiB available" in table


def test_collectives_are_counted_and_sized_from_the_hlo():
  hlo = ("%a = (f32[32]{0:T(128)S(1)}, bf16[4,8]{1,0}) all-reduce(f32[32] %x, bf16[4,8] %w), "
         "replica_groups={}\n"
         "%b = bf16[4,4,16]{2,1,0:T(4,128)(2,1)S(1)} all-gather(%fusion.167), dimensions={0}\n"
         "%c = s32[]{:T(128)} all-reduce-start(s32[] %z)\n"
         "%d = f32[8]{0} add(f32[8] %all-reduce.1, f32[8] %e)\n")
  assert compile_check.collectives(hlo) == {
      "all-reduce": {"count": 2, "result_bytes": 32 * 4 + 4 * 8 * 2 + 4},
      "all-gather": {"count": 1, "result_bytes": 4 * 4 * 16 * 2},
      "reduce-scatter": {"count": 0, "result_bytes": 0},
      "all-to-all": {"count": 0, "result_bytes": 0},
      "collective-permute": {"count": 0, "result_bytes": 0}}


def test_without_libtpu_the_run_stops_with_one_error_line_saying_what_to_install(
    monkeypatch, tmp_path):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real_find_spec(name, *a))
  config = tiny_food101_config()
  config.compile_check.topology = "v5e-4"
  with pytest.raises(SystemExit) as exit_info:
    runtime.run(config, str(tmp_path), "compile_check")
  assert exit_info.value.code.startswith(
      'Error: compile_check needs libtpu: pip install "jax[tpu]==0.10.2"')
  assert "\n" not in exit_info.value.code


def test_a_batch_that_does_not_split_over_the_chips_is_a_config_error():
  config = tiny_food101_config(batch_size=18)
  config.compile_check.topology = "v4-8"
  with pytest.raises(config_checks.ConfigError, match="batch_size=18 does not split over the "
                                                      "4 chips of v4-8"):
    compile_check.check_config(config)


def test_the_mode_sets_its_environment_without_overriding(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu,tpu")
  monkeypatch.delenv("TPU_SKIP_MDS_QUERY", raising=False)
  stages.set_environment("compile_check")
  import os  # pylint: disable=g-import-not-at-top
  assert (os.environ["JAX_PLATFORMS"], os.environ["TPU_SKIP_MDS_QUERY"]) == ("cpu,tpu", "1")


@pytest.mark.skipif(not HAS_LIBTPU, reason='needs libtpu: pip install "jax[tpu]==0.10.2"')
def test_the_toy_step_compiles_for_a_v5e_4_and_its_summary_is_written(monkeypatch, tmp_path,
                                                                      capsys):
  for name, value in stages.STAGES["compile_check"].environment[1:]:  # libtpu's, scoped.
    monkeypatch.setenv(name, value)
  config = tiny_food101_config()  # Batch 16: 4 images, 8 views per chip.
  config.compile_check.topology = "v5e-4"
  summary = compile_check.compile_check(config, str(tmp_path))
  assert json.loads((tmp_path / compile_check.SUMMARY_FILE).read_text()) == summary
  assert summary["device_kind"] == "TPU v5 lite" and summary["chips"] == 4
  assert summary["views_per_chip"] == 8 and summary["fits"] is True
  assert summary["total_bytes"] == (summary["argument_bytes"] + summary["output_bytes"]
                                    - summary["alias_bytes"] + summary["temp_bytes"])
  assert 0 < summary["total_bytes"] < summary["hbm_bytes"]
  # The state (replicated) is donated: its outputs alias its inputs.
  assert summary["alias_bytes"] >= summary["state_bytes"] > 0
  assert summary["flops_per_view"] > 0 and summary["bytes_accessed_per_view"] > 0
  # NT-Xent gathers the embeddings: 4 chips x 4 images x 16 features, of 2 views.
  assert summary["collectives"]["all-gather"]["count"] >= 1
  assert summary["collectives"]["all-reduce"]["result_bytes"] > 0
  table = capsys.readouterr().out
  assert "v5e-4 (4 chips, TPU v5 lite, v5e:2x2)" in table and ": fits" in table
  assert "against bf16's peak; this config computes in float32" in table
  assert summary["views_per_second_bound"] == min(
      summary["compute_bound_views_per_second"], summary["memory_bound_views_per_second"])


def test_the_abstract_state_and_batch_are_those_pretraining_builds():
  config = tiny_food101_config(online_probe=True)
  mesh = sharding.create_mesh()
  tx, _ = state_lib.create_optimizer(config, 10, 10)
  abstract = state_lib.abstract_train_state(config, tx, mesh, 5)
  real = state_lib.init_train_state(config, tx, mesh, 5)
  assert jax.tree.structure(abstract) == jax.tree.structure(real)
  for spec, array in zip(jax.tree.leaves(abstract), jax.tree.leaves(real)):
    assert (spec.shape, spec.dtype, spec.sharding) == (array.shape, array.dtype, array.sharding)
  batch = pretrain_step.abstract_batch(config, mesh)
  assert {name: (spec.shape, spec.dtype.name) for name, spec in batch.items()} == {
      "views": ((16, 2, 16, 16, 3), "uint8"), "label": ((16,), "int32")}
  assert batch["views"].sharding == sharding.batch_sharded(mesh)


@pytest.mark.parametrize("start, fits_at_start", [(256, True), (64, True), (1024, False),
                                                  (8, True), (4096, False)])
def test_the_largest_batch_search_finds_the_edge_from_either_side(start, fits_at_start):
  tried = []

  def fits(n):  # The edge: 424 images per chip fit, 432 do not.
    tried.append(n)
    return n <= 424

  assert compile_check.largest_fitting(fits, start, fits_at_start) == 424
  assert all(n % 8 == 0 for n in tried) and len(tried) <= 12


def test_the_largest_batch_search_stops_at_its_limit_and_at_nothing_fitting():
  assert compile_check.largest_fitting(lambda n: True, 64, True, limit=1000) == 1000
  assert compile_check.largest_fitting(lambda n: False, 64, False) == 0
