"""runtime.initialize_distributed, in-process with jax.distributed.initialize replaced: a
failed join where the environment says several processes is one `Error:` line; on one host
it is a single-process run."""

import importlib

import jax
import pytest

from simclr_jax import runtime, stages

# Every variable the check reads, cleared before each test (the machine may set some).
_VARIABLES = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES", "MEGASCALE_NUM_SLICES",
              "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS",
              "SIMCLR_NO_DISTRIBUTED")
_FAILURE = "coordinator_address should be defined."


@pytest.fixture
def calls(monkeypatch):
  """Clears the environment and makes jax.distributed.initialize fail; the list of its calls."""
  for name in _VARIABLES:
    monkeypatch.delenv(name, raising=False)
  made = []

  def failing_initialize(*args, **kwargs):
    made.append((args, kwargs))
    raise ValueError(_FAILURE)

  monkeypatch.setattr(jax.distributed, "initialize", failing_initialize)
  return made


@pytest.mark.parametrize("name, value", [
    ("TPU_WORKER_HOSTNAMES", "t1v-0,t1v-1"),
    ("TPU_PROCESS_ADDRESSES", "10.0.0.2:8476,10.0.0.3:8476,10.0.0.4:8476"),
    ("MEGASCALE_NUM_SLICES", "2"),
    ("SLURM_NTASKS", "4"),
    ("OMPI_COMM_WORLD_SIZE", "2"),
    ("JAX_COORDINATOR_ADDRESS", "10.0.0.2:1234"),
])
def test_a_failed_join_where_several_processes_are_expected_is_one_error(
    calls, monkeypatch, name, value):
  monkeypatch.setenv(name, value)
  with pytest.raises(SystemExit) as exit_info:
    runtime.initialize_distributed()
  assert len(calls) == 1
  message = exit_info.value.code
  assert message == (f"Error: {name}={value} says this run has several processes, but "
                     f"jax.distributed.initialize() failed: {_FAILURE} Fix the cluster "
                     "set-up, or set SIMCLR_NO_DISTRIBUTED=1 to run this process alone.")


def test_the_error_keeps_the_first_line_of_a_long_cause(calls, monkeypatch):
  def failing_initialize(*args, **kwargs):
    raise RuntimeError("\nFailed to recognize coordinator address t1v-0\nmore details")

  monkeypatch.setattr(jax.distributed, "initialize", failing_initialize)
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1v-0,t1v-1")
  with pytest.raises(SystemExit) as exit_info:
    runtime.initialize_distributed()
  message = exit_info.value.code
  assert "\n" not in message
  assert "failed: Failed to recognize coordinator address t1v-0. Fix" in message, message


@pytest.mark.parametrize("environment", [
    {},
    {"TPU_WORKER_HOSTNAMES": "localhost"},
    {"TPU_PROCESS_ADDRESSES": "", "MEGASCALE_NUM_SLICES": "1"},
    {"SLURM_NTASKS": "1", "OMPI_COMM_WORLD_SIZE": "1"},
    {"SLURM_NTASKS": "not-a-number", "JAX_COORDINATOR_ADDRESS": " "},
])
def test_a_failed_join_on_one_host_is_a_single_process_run(calls, monkeypatch, environment):
  for name, value in environment.items():
    monkeypatch.setenv(name, value)
  assert runtime.initialize_distributed() is None
  assert len(calls) == 1


def test_no_distributed_skips_the_join_whatever_the_environment_says(calls, monkeypatch):
  monkeypatch.setenv("SIMCLR_NO_DISTRIBUTED", "1")
  monkeypatch.setenv("SLURM_NTASKS", "4")
  runtime.initialize_distributed()
  assert calls == []


def test_a_successful_join_is_left_alone(calls, monkeypatch):
  joined = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: joined.append((a, k)))
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1v-0,t1v-1")
  runtime.initialize_distributed()
  assert joined == [((), {})]


def test_the_run_stops_before_it_touches_the_workdir(calls, monkeypatch, tmp_path):
  config = importlib.import_module("configs.demo").get_config()
  monkeypatch.setattr(stages, "run", lambda *args: pytest.fail("a stage ran"))
  monkeypatch.setenv("SLURM_NTASKS", "2")
  workdir = tmp_path / "work"
  with pytest.raises(SystemExit) as exit_info:
    runtime.run(config, str(workdir), "pretrain")
  assert exit_info.value.code.startswith("Error: SLURM_NTASKS=2 says this run has several")
  assert not workdir.exists()
