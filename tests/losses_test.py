"""NT-Xent against independent float64 NumPy references, on one device and sharded."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from simclr_jax import losses

TEMPERATURES = (0.1, 0.5, 1.0)
SHAPES = ((4, 3), (16, 32))


@pytest.fixture
def x64():
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", False)


def _pair(n, d, seed=0, noise=None):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(n, d))
  if noise is None:
    z2 = rng.normal(size=(n, d))
  else:  # Correlated views, so that some (not all) anchors find their positive.
    z2 = z1 + noise * rng.normal(size=(n, d))
  return z1, z2


# ---------------------------------------------------------------------------------------
# NumPy references (float64).
# ---------------------------------------------------------------------------------------


def _normalize(z):
  return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def ref_loop(z1, z2, tau):
  """Per-anchor loop: anchor i vs all j != i, positive i <-> i + N, mean over 2N."""
  n = z1.shape[0]
  u = _normalize(np.concatenate([z1, z2]).astype(np.float64))
  total = 0.0
  for i in range(2 * n):
    positive = (i + n) % (2 * n)
    others = [j for j in range(2 * n) if j != i]
    logits = np.array([u[i] @ u[j] / tau for j in others])
    m = logits.max()
    lse = m + np.log(np.sum(np.exp(logits - m)))
    total += lse - u[i] @ u[positive] / tau
  return total / (2 * n)


def ref_seed(z1, z2, tau):
  """Literal NumPy translation of the seed's torch nt_xent_loss."""
  n = z1.shape[0]
  z = np.concatenate([z1, z2], axis=0).astype(np.float64)
  z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)  # F.normalize
  sim = z @ z.T / tau
  np.fill_diagonal(sim, -np.inf)
  targets = np.concatenate([np.arange(n) + n, np.arange(n)])
  m = sim.max(axis=1, keepdims=True)
  log_probs = sim - (m + np.log(np.exp(sim - m).sum(axis=1, keepdims=True)))
  return -np.mean(log_probs[np.arange(2 * n), targets])


def ref_grad(z1, z2, tau):
  """Analytic gradient: dL/dS = (P - Y)/2N, S = U U^T / tau, U = z / ||z||."""
  n = z1.shape[0]
  z = np.concatenate([z1, z2]).astype(np.float64)
  norms = np.linalg.norm(z, axis=1, keepdims=True)
  u = z / np.maximum(norms, 1e-12)
  s = u @ u.T / tau
  np.fill_diagonal(s, -np.inf)
  p = np.exp(s - s.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  y = np.zeros_like(p)
  y[np.arange(2 * n), (np.arange(2 * n) + n) % (2 * n)] = 1.0
  g = (p - y) / (2 * n)
  du = (g + g.T) @ u / tau
  # Jacobian of x / ||x||: (I - u u^T) / ||x||.
  dz = (du - u * np.sum(u * du, axis=1, keepdims=True)) / np.maximum(norms, 1e-12)
  return dz[:n], dz[n:]


def ref_accuracy(z1, z2):
  n = z1.shape[0]
  u = _normalize(np.concatenate([z1, z2]).astype(np.float64))
  s = u @ u.T
  np.fill_diagonal(s, -np.inf)
  return np.mean(np.argmax(s, axis=1) == (np.arange(2 * n) + n) % (2 * n))


def _finite_difference_grad(f, z1, z2, eps=1e-6):
  grads = []
  for which in (0, 1):
    args = [z1.copy(), z2.copy()]
    g = np.zeros_like(args[which])
    for idx in np.ndindex(*g.shape):
      plus = [a.copy() for a in args]
      minus = [a.copy() for a in args]
      plus[which][idx] += eps
      minus[which][idx] -= eps
      g[idx] = (f(*plus) - f(*minus)) / (2 * eps)
    grads.append(g)
  return grads


# ---------------------------------------------------------------------------------------
# Reference self-consistency (so that the references cannot agree by a shared mistake).
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", TEMPERATURES)
def test_references_agree_with_each_other(tau):
  z1, z2 = _pair(4, 3, seed=1)
  np.testing.assert_allclose(ref_loop(z1, z2, tau), ref_seed(z1, z2, tau), rtol=1e-12)
  fd1, fd2 = _finite_difference_grad(lambda a, b: ref_loop(a, b, tau), z1, z2)
  g1, g2 = ref_grad(z1, z2, tau)
  np.testing.assert_allclose(g1, fd1, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(g2, fd2, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------
# Single device.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("tau", TEMPERATURES)
def test_nt_xent_float64_matches_reference(x64, n, d, tau):
  z1, z2 = _pair(n, d, seed=n + d)
  a, b = jnp.asarray(z1, jnp.float64), jnp.asarray(z2, jnp.float64)
  loss = losses.nt_xent(a, b, tau)
  assert loss.dtype == jnp.float64
  np.testing.assert_allclose(float(loss), ref_loop(z1, z2, tau), rtol=1e-6)
  np.testing.assert_allclose(float(loss), ref_seed(z1, z2, tau), rtol=1e-6)
  g1, g2 = jax.grad(losses.nt_xent, argnums=(0, 1))(a, b, tau)
  r1, r2 = ref_grad(z1, z2, tau)
  scale = max(np.abs(r1).max(), np.abs(r2).max())
  np.testing.assert_allclose(np.asarray(g1), r1, rtol=1e-6, atol=1e-9 * scale)
  np.testing.assert_allclose(np.asarray(g2), r2, rtol=1e-6, atol=1e-9 * scale)


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("tau", TEMPERATURES)
def test_nt_xent_float32_matches_reference(n, d, tau):
  z1, z2 = _pair(n, d, seed=10 + n + d)
  a, b = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
  loss = losses.nt_xent(a, b, tau)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(float(loss), ref_seed(z1, z2, tau), rtol=1e-5)
  g1, g2 = jax.grad(losses.nt_xent, argnums=(0, 1))(a, b, tau)
  r1, r2 = ref_grad(z1, z2, tau)
  scale = max(np.abs(r1).max(), np.abs(r2).max())
  np.testing.assert_allclose(np.asarray(g1), r1, rtol=1e-5, atol=1e-5 * scale)
  np.testing.assert_allclose(np.asarray(g2), r2, rtol=1e-5, atol=1e-5 * scale)


def test_nt_xent_default_temperature_is_seed_value():
  z1, z2 = _pair(8, 5, seed=3)
  np.testing.assert_allclose(float(losses.nt_xent(jnp.asarray(z1, jnp.float32),
                                                  jnp.asarray(z2, jnp.float32))),
                             ref_seed(z1, z2, 0.5), rtol=1e-5)


@pytest.mark.parametrize("noise", (0.3, 0.8, 1.5))
def test_accuracy_matches_numpy_argmax(noise):
  z1, z2 = _pair(32, 8, seed=4, noise=noise)
  loss, acc = losses.nt_xent_with_accuracy(jnp.asarray(z1, jnp.float32),
                                           jnp.asarray(z2, jnp.float32), 0.2)
  expected = ref_accuracy(z1, z2)
  np.testing.assert_allclose(float(acc), expected, atol=1e-7)
  np.testing.assert_allclose(float(loss), ref_seed(z1, z2, 0.2), rtol=1e-5)


def test_accuracy_is_nontrivial_for_correlated_views():
  # Guards the previous test against being vacuous (all 0 or all 1).
  z1, z2 = _pair(32, 8, seed=4, noise=0.8)
  assert 0.0 < ref_accuracy(z1, z2) < 1.0
  z1, z2 = _pair(32, 8, seed=4, noise=0.0)
  _, acc = losses.nt_xent_with_accuracy(jnp.asarray(z1, jnp.float32),
                                        jnp.asarray(z2, jnp.float32), 0.5)
  assert float(acc) == 1.0


@pytest.mark.parametrize("c", (1e-3, 0.37, 250.0))
def test_loss_is_scale_invariant(c):
  z1, z2 = _pair(16, 32, seed=5)
  a, b = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
  base = float(losses.nt_xent(a, b, 0.5))
  np.testing.assert_allclose(float(losses.nt_xent(c * a, c * b, 0.5)), base, rtol=1e-5)
  # Scaling a single view (or a single row) also leaves the loss unchanged.
  np.testing.assert_allclose(float(losses.nt_xent(a.at[3].multiply(c), b, 0.5)), base,
                             rtol=1e-5)


def test_gradient_finite_with_zero_embedding_row():
  z1, z2 = _pair(4, 3, seed=6)
  z1[1] = 0.0
  a, b = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
  loss = losses.nt_xent(a, b, 0.5)
  np.testing.assert_allclose(float(loss), ref_seed(z1, z2, 0.5), rtol=1e-5)
  g1, g2 = jax.grad(losses.nt_xent, argnums=(0, 1))(a, b, 0.5)
  assert np.all(np.isfinite(np.asarray(g1))), g1
  assert np.all(np.isfinite(np.asarray(g2))), g2
  # Rows other than the zero one see the zero row as u = 0, exactly as the reference.
  r1, r2 = ref_grad(z1, z2, 0.5)
  keep = np.arange(4) != 1
  np.testing.assert_allclose(np.asarray(g1)[keep], r1[keep], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(g2), r2, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Sharded over 8 simulated CPU devices.
# ---------------------------------------------------------------------------------------

NUM_DEVICES = 8
N, D = 32, 16


@pytest.fixture
def mesh():
  if len(jax.devices()) < NUM_DEVICES:
    pytest.skip(f"needs {NUM_DEVICES} devices (XLA_FLAGS="
                f"--xla_force_host_platform_device_count={NUM_DEVICES})")
  return jax.make_mesh((NUM_DEVICES,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def _sharded_inputs(mesh, tau_seed=7, noise=0.9):
  z1, z2 = _pair(N, D, seed=tau_seed, noise=noise)
  sharding = NamedSharding(mesh, P("data"))
  a = jax.device_put(jnp.asarray(z1, jnp.float32), sharding)
  b = jax.device_put(jnp.asarray(z2, jnp.float32), sharding)
  return z1, z2, a, b


def _rel_err(x, y):
  return np.linalg.norm(np.asarray(x) - np.asarray(y)) / np.linalg.norm(np.asarray(y))


@pytest.mark.parametrize("tau", (0.1, 0.5))
def test_sharded_matches_single_device(mesh, tau):
  z1, z2, a, b = _sharded_inputs(mesh)
  loss, acc = jax.jit(lambda x, y: losses.sharded_nt_xent(x, y, tau, mesh))(a, b)
  ref_loss, ref_acc = losses.nt_xent_with_accuracy(jnp.asarray(z1, jnp.float32),
                                                   jnp.asarray(z2, jnp.float32), tau)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  assert float(acc) == float(ref_acc)
  assert 0.0 < float(acc) < 1.0  # Non-trivial accuracy, so the comparison means something.
  np.testing.assert_allclose(float(loss), ref_seed(z1, z2, tau), rtol=1e-5)

  sharded_grad = jax.jit(jax.grad(lambda x, y: losses.sharded_nt_xent(x, y, tau, mesh)[0],
                                  argnums=(0, 1)))
  g1, g2 = sharded_grad(a, b)
  r1, r2 = jax.grad(losses.nt_xent, argnums=(0, 1))(jnp.asarray(z1, jnp.float32),
                                                     jnp.asarray(z2, jnp.float32), tau)
  assert g1.shape == (N, D) and g2.shape == (N, D)
  assert _rel_err(g1, r1) < 1e-6 and _rel_err(g2, r2) < 1e-6
  np.testing.assert_allclose(np.asarray(g1), np.asarray(r1), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(g2), np.asarray(r2), rtol=1e-5, atol=1e-7)
  n1, n2 = ref_grad(z1, z2, tau)
  np.testing.assert_allclose(np.asarray(g1), n1, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(g2), n2, rtol=1e-4, atol=1e-6)


def test_sharded_gradients_reach_every_shard(mesh):
  z1, z2, a, b = _sharded_inputs(mesh)
  g1, g2 = jax.jit(jax.grad(lambda x, y: losses.sharded_nt_xent(x, y, 0.5, mesh)[0],
                            argnums=(0, 1)))(a, b)
  refs = ref_grad(z1, z2, 0.5)
  rows = N // NUM_DEVICES
  for g, ref in zip((g1, g2), refs):
    assert len(g.addressable_shards) == NUM_DEVICES
    for shard in g.addressable_shards:
      data = np.asarray(shard.data)
      assert data.shape == (rows, D)
      assert np.all(np.abs(data).sum(axis=1) > 0), (shard.device, data)
      # Including the part that flows back through the other devices' all-gather.
      np.testing.assert_allclose(data, ref[shard.index], rtol=1e-4, atol=1e-6)
  # And in the global view, every device's block of rows.
  for k in range(NUM_DEVICES):
    assert np.abs(np.asarray(g2)[k * rows:(k + 1) * rows]).sum(axis=1).min() > 0


def test_sharded_logits_are_local_anchors_by_global_keys(mesh):
  _, _, a, b = _sharded_inputs(mesh)
  fn = jax.jit(lambda x, y: losses.sharded_nt_xent(x, y, 0.5, mesh)[0])
  hlo = fn.lower(a, b).compile().as_text()
  dot_shapes = set(re.findall(r"f32\[(\d+),(\d+)\]\{[^}]*\} dot\(", hlo))
  local = 2 * N // NUM_DEVICES
  assert (str(local), str(2 * N)) in dot_shapes, dot_shapes
  assert (str(2 * N), str(2 * N)) not in dot_shapes, dot_shapes


def test_sharded_anchor_losses_see_local_anchors(mesh, monkeypatch):
  seen = []
  original = losses._anchor_losses

  def recording(local_z1, local_z2, keys, offset, temperature):
    seen.append((local_z1.shape, local_z2.shape, keys.shape))
    return original(local_z1, local_z2, keys, offset, temperature)

  monkeypatch.setattr(losses, "_anchor_losses", recording)
  _, _, a, b = _sharded_inputs(mesh)
  jax.jit(lambda x, y: losses.sharded_nt_xent(x, y, 0.5, mesh))(a, b)
  rows = N // NUM_DEVICES
  assert seen == [((rows, D), (rows, D), (2 * N, D))]
