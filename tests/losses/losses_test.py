"""NT-Xent against independent float64 NumPy references, on one device and sharded."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from simclr_jax.losses import byol, infonce, nt_xent, vicreg

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
  loss = nt_xent.nt_xent(a, b, tau)
  assert loss.dtype == jnp.float64
  np.testing.assert_allclose(float(loss), ref_loop(z1, z2, tau), rtol=1e-6)
  np.testing.assert_allclose(float(loss), ref_seed(z1, z2, tau), rtol=1e-6)
  g1, g2 = jax.grad(nt_xent.nt_xent, argnums=(0, 1))(a, b, tau)
  r1, r2 = ref_grad(z1, z2, tau)
  scale = max(np.abs(r1).max(), np.abs(r2).max())
  np.testing.assert_allclose(np.asarray(g1), r1, rtol=1e-6, atol=1e-9 * scale)
  np.testing.assert_allclose(np.asarray(g2), r2, rtol=1e-6, atol=1e-9 * scale)


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("tau", TEMPERATURES)
def test_nt_xent_float32_matches_reference(n, d, tau):
  z1, z2 = _pair(n, d, seed=10 + n + d)
  a, b = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
  loss = nt_xent.nt_xent(a, b, tau)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(float(loss), ref_seed(z1, z2, tau), rtol=1e-5)
  g1, g2 = jax.grad(nt_xent.nt_xent, argnums=(0, 1))(a, b, tau)
  r1, r2 = ref_grad(z1, z2, tau)
  scale = max(np.abs(r1).max(), np.abs(r2).max())
  np.testing.assert_allclose(np.asarray(g1), r1, rtol=1e-5, atol=1e-5 * scale)
  np.testing.assert_allclose(np.asarray(g2), r2, rtol=1e-5, atol=1e-5 * scale)


def test_nt_xent_default_temperature_is_seed_value():
  z1, z2 = _pair(8, 5, seed=3)
  np.testing.assert_allclose(float(nt_xent.nt_xent(jnp.asarray(z1, jnp.float32),
                                                  jnp.asarray(z2, jnp.float32))),
                             ref_seed(z1, z2, 0.5), rtol=1e-5)


@pytest.mark.parametrize("noise", (0.3, 0.8, 1.5))
def test_accuracy_matches_numpy_argmax(noise):
  z1, z2 = _pair(32, 8, seed=4, noise=noise)
  loss, acc = nt_xent.nt_xent_with_accuracy(jnp.asarray(z1, jnp.float32),
                                           jnp.asarray(z2, jnp.float32), 0.2)
  expected = ref_accuracy(z1, z2)
  np.testing.assert_allclose(float(acc), expected, atol=1e-7)
  np.testing.assert_allclose(float(loss), ref_seed(z1, z2, 0.2), rtol=1e-5)


def test_accuracy_is_nontrivial_for_correlated_views():
  # Guards the previous test against being vacuous (all 0 or all 1).
  z1, z2 = _pair(32, 8, seed=4, noise=0.8)
  assert 0.0 < ref_accuracy(z1, z2) < 1.0
  z1, z2 = _pair(32, 8, seed=4, noise=0.0)
  _, acc = nt_xent.nt_xent_with_accuracy(jnp.asarray(z1, jnp.float32),
                                        jnp.asarray(z2, jnp.float32), 0.5)
  assert float(acc) == 1.0


@pytest.mark.parametrize("c", (1e-3, 0.37, 250.0))
def test_loss_is_scale_invariant(c):
  z1, z2 = _pair(16, 32, seed=5)
  a, b = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
  base = float(nt_xent.nt_xent(a, b, 0.5))
  np.testing.assert_allclose(float(nt_xent.nt_xent(c * a, c * b, 0.5)), base, rtol=1e-5)
  # Scaling a single view (or a single row) also leaves the loss unchanged.
  np.testing.assert_allclose(float(nt_xent.nt_xent(a.at[3].multiply(c), b, 0.5)), base,
                             rtol=1e-5)


def test_gradient_finite_with_zero_embedding_row():
  z1, z2 = _pair(4, 3, seed=6)
  z1[1] = 0.0
  a, b = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
  loss = nt_xent.nt_xent(a, b, 0.5)
  np.testing.assert_allclose(float(loss), ref_seed(z1, z2, 0.5), rtol=1e-5)
  g1, g2 = jax.grad(nt_xent.nt_xent, argnums=(0, 1))(a, b, 0.5)
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
  loss, acc = jax.jit(lambda x, y: nt_xent.sharded_nt_xent(x, y, tau, mesh))(a, b)
  ref_loss, ref_acc = nt_xent.nt_xent_with_accuracy(jnp.asarray(z1, jnp.float32),
                                                   jnp.asarray(z2, jnp.float32), tau)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  assert float(acc) == float(ref_acc)
  assert 0.0 < float(acc) < 1.0  # Non-trivial accuracy, so the comparison means something.
  np.testing.assert_allclose(float(loss), ref_seed(z1, z2, tau), rtol=1e-5)

  sharded_grad = jax.jit(jax.grad(lambda x, y: nt_xent.sharded_nt_xent(x, y, tau, mesh)[0],
                                  argnums=(0, 1)))
  g1, g2 = sharded_grad(a, b)
  r1, r2 = jax.grad(nt_xent.nt_xent, argnums=(0, 1))(jnp.asarray(z1, jnp.float32),
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
  g1, g2 = jax.jit(jax.grad(lambda x, y: nt_xent.sharded_nt_xent(x, y, 0.5, mesh)[0],
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
  fn = jax.jit(lambda x, y: nt_xent.sharded_nt_xent(x, y, 0.5, mesh)[0])
  hlo = fn.lower(a, b).compile().as_text()
  dot_shapes = set(re.findall(r"f32\[(\d+),(\d+)\]\{[^}]*\} dot\(", hlo))
  local = 2 * N // NUM_DEVICES
  assert (str(local), str(2 * N)) in dot_shapes, dot_shapes
  assert (str(2 * N), str(2 * N)) not in dot_shapes, dot_shapes


def test_sharded_anchor_losses_see_local_anchors(mesh, monkeypatch):
  seen = []
  original = nt_xent._anchor_losses

  def recording(local_z1, local_z2, keys, offset, temperature):
    seen.append((local_z1.shape, local_z2.shape, keys.shape))
    return original(local_z1, local_z2, keys, offset, temperature)

  monkeypatch.setattr(nt_xent, "_anchor_losses", recording)
  _, _, a, b = _sharded_inputs(mesh)
  jax.jit(lambda x, y: nt_xent.sharded_nt_xent(x, y, 0.5, mesh))(a, b)
  rows = N // NUM_DEVICES
  assert seen == [((rows, D), (rows, D), (2 * N, D))]


# ---------------------------------------------------------------------------------------
# BYOL, MoCo v3's InfoNCE and VICReg: NumPy references (float64), written from the papers'
# code rather than from simclr_jax.losses.
# ---------------------------------------------------------------------------------------


def ref_byol(p, z):
  """BYOL's regression_loss: 2 - 2 cos(p, z), mean over the batch."""
  p, z = p.astype(np.float64), z.astype(np.float64)
  cos = np.sum(p * z, axis=1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(z, axis=1))
  return np.mean(2.0 - 2.0 * cos)


def ref_infonce_cross_entropy(q, k, tau):
  """Per-query loop: query i vs all keys j, positive key i, mean cross entropy (no 2 tau)."""
  q, k = _normalize(q.astype(np.float64)), _normalize(k.astype(np.float64))
  total = 0.0
  for i in range(q.shape[0]):
    logits = np.array([q[i] @ k[j] / tau for j in range(k.shape[0])])
    m = logits.max()
    total += m + np.log(np.sum(np.exp(logits - m))) - logits[i]
  return total / q.shape[0]


def ref_infonce(q, k, tau):
  """moco-v3 MoCo.contrastive_loss on one process: CrossEntropyLoss(q k^T / T) * 2T."""
  return ref_infonce_cross_entropy(q, k, tau) * (2 * tau)


def ref_infonce_grad(q, k, tau):
  """Analytic gradient: dL/dS = 2 tau (P - I) / N with S = Q K^T / tau, through x/||x||."""
  q, k = q.astype(np.float64), k.astype(np.float64)
  n = q.shape[0]
  q_norm, k_norm = np.linalg.norm(q, axis=1, keepdims=True), np.linalg.norm(k, axis=1,
                                                                           keepdims=True)
  u, v = q / q_norm, k / k_norm
  s = u @ v.T / tau
  p = np.exp(s - s.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  g = 2 * tau * (p - np.eye(n)) / n
  du, dv = g @ v / tau, g.T @ u / tau
  dq = (du - u * np.sum(u * du, axis=1, keepdims=True)) / q_norm
  dk = (dv - v * np.sum(v * dv, axis=1, keepdims=True)) / k_norm
  return dq, dk


def ref_infonce_accuracy(q, k):
  return np.mean(np.argmax(_normalize(q) @ _normalize(k).T, axis=1) == np.arange(len(q)))


def _torch_off_diagonal(x):
  """vicreg's off_diagonal: x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()."""
  n = x.shape[0]
  return x.flatten()[:-1].reshape(n - 1, n + 1)[:, 1:].flatten()


def ref_vicreg_terms(x, y):
  """Literal NumPy translation of facebookresearch/vicreg VICReg.forward, unweighted."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  batch_size, num_features = x.shape
  repr_loss = np.mean((x - y) ** 2)                                    # F.mse_loss
  x = x - x.mean(axis=0)
  y = y - y.mean(axis=0)
  std_x = np.sqrt(x.var(axis=0, ddof=1) + 0.0001)                      # torch var: unbiased
  std_y = np.sqrt(y.var(axis=0, ddof=1) + 0.0001)
  std_loss = (np.mean(np.maximum(0.0, 1 - std_x)) / 2 +
              np.mean(np.maximum(0.0, 1 - std_y)) / 2)
  cov_x = (x.T @ x) / (batch_size - 1)
  cov_y = (y.T @ y) / (batch_size - 1)
  cov_loss = ((_torch_off_diagonal(cov_x) ** 2).sum() / num_features +
              (_torch_off_diagonal(cov_y) ** 2).sum() / num_features)
  return {"invariance": repr_loss, "variance": std_loss, "covariance": cov_loss}


def ref_vicreg(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
  t = ref_vicreg_terms(x, y)
  return sim_coeff * t["invariance"] + std_coeff * t["variance"] + cov_coeff * t["covariance"]


def _vicreg_pair(n, d, seed=0):
  """Correlated views with non-zero means and column scales from 0.2 to 3, so that the
  variance hinge is active on some columns and not on others."""
  rng = np.random.default_rng(seed)
  scales = np.geomspace(0.2, 3.0, d)
  mixing = np.eye(d) + 0.3 * rng.normal(size=(d, d))
  z1 = (rng.normal(size=(n, d)) @ mixing) * scales + rng.normal(size=d)
  z2 = z1 + 0.5 * scales * rng.normal(size=(n, d))
  return z1, z2


def _hinge_active(z):
  std = np.sqrt(z.var(axis=0, ddof=1) + 1e-4)
  return std < 1


def _assert_grads_close(grads, refs, rtol, atol_scale):
  scale = max(np.abs(r).max() for r in refs)
  for g, r in zip(grads, refs):
    np.testing.assert_allclose(np.asarray(g), r, rtol=rtol, atol=atol_scale * scale)


def test_new_references_agree_with_each_other():
  q, k = _pair(5, 4, seed=21)
  for tau in (0.2, 1.0):
    fd = _finite_difference_grad(lambda a, b, tau=tau: ref_infonce(a, b, tau), q, k)
    _assert_grads_close(ref_infonce_grad(q, k, tau), fd, rtol=1e-6, atol_scale=1e-8)
  # vicreg's torch off_diagonal trick picks exactly the entries off the diagonal.
  m = np.arange(25.0).reshape(5, 5)
  np.testing.assert_array_equal(np.sort(_torch_off_diagonal(m)), m[~np.eye(5, dtype=bool)])
  # The VICReg test inputs exercise both sides of the hinge, in both views.
  z1, z2 = _vicreg_pair(16, 12, seed=22)
  for z in (z1, z2):
    assert 0 < _hinge_active(z).sum() < 12


# ---------------------------------------------------------------------------------------
# BYOL.
# ---------------------------------------------------------------------------------------


def test_byol_float64_matches_reference(x64):
  p, z = _pair(16, 8, seed=31, noise=0.7)
  p, z = 3.0 * p, 0.2 * z + 0.1  # Not normalised, different scales.
  a, b = jnp.asarray(p, jnp.float64), jnp.asarray(z, jnp.float64)
  loss = byol.byol_loss(a, b)
  assert loss.dtype == jnp.float64
  np.testing.assert_allclose(float(loss), ref_byol(p, z), rtol=1e-12)
  grads = jax.grad(byol.byol_loss, argnums=(0, 1))(a, b)
  fd = _finite_difference_grad(ref_byol, p, z)
  _assert_grads_close(grads, fd, rtol=1e-6, atol_scale=1e-8)
  # No stop-gradient inside: the targets get their gradient too (the caller stops it).
  assert np.abs(np.asarray(grads[1])).sum() > 0


def test_byol_float32_matches_reference():
  p, z = _pair(16, 32, seed=32, noise=1.0)
  a, b = jnp.asarray(p, jnp.float32), jnp.asarray(z, jnp.float32)
  np.testing.assert_allclose(float(byol.byol_loss(a, b)), ref_byol(p, z), rtol=1e-5)
  grads = jax.grad(byol.byol_loss, argnums=(0, 1))(a, b)
  _assert_grads_close(grads, _finite_difference_grad(ref_byol, p, z), rtol=1e-4,
                      atol_scale=1e-5)


def test_byol_same_direction_is_zero_and_opposite_is_four():
  z, _ = _pair(8, 16, seed=33)
  c = np.geomspace(0.01, 50.0, 8)[:, None]  # Row scales do not matter.
  a, b = jnp.asarray(c * z, jnp.float32), jnp.asarray(z, jnp.float32)
  assert float(byol.byol_loss(b, b)) == 0.0
  # Scaled rows: a few ulps of the normalisation, squared (2 - 2 cos would leave ~1e-7).
  assert 0.0 <= float(byol.byol_loss(a, b)) < 1e-11
  np.testing.assert_allclose(float(byol.byol_loss(-a, b)), 4.0, rtol=1e-6)
  np.testing.assert_allclose(float(byol.byol_loss(a, -b)), 4.0, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# MoCo v3's InfoNCE.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", (0.2, 1.0))
def test_infonce_float64_matches_reference(x64, tau):
  q, k = _pair(16, 8, seed=41, noise=1.0)
  a, b = jnp.asarray(2.0 * q, jnp.float64), jnp.asarray(k, jnp.float64)
  loss, acc = infonce.infonce_with_accuracy(a, b, tau)
  assert loss.dtype == jnp.float64
  np.testing.assert_allclose(float(loss), ref_infonce(2.0 * q, k, tau), rtol=1e-12)
  np.testing.assert_allclose(float(infonce.infonce_loss(a, b, tau)), float(loss), rtol=1e-15)
  assert float(acc) == ref_infonce_accuracy(q, k)
  grads = jax.grad(infonce.infonce_loss, argnums=(0, 1))(a, b, tau)
  _assert_grads_close(grads, ref_infonce_grad(2.0 * q, k, tau), rtol=1e-9, atol_scale=1e-12)


@pytest.mark.parametrize("tau", (0.2, 1.0))
def test_infonce_float32_matches_reference(tau):
  q, k = _pair(16, 32, seed=42, noise=2.0)
  a, b = jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32)
  loss, acc = infonce.infonce_with_accuracy(a, b, tau)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(float(loss), ref_infonce(q, k, tau), rtol=1e-5)
  assert float(acc) == ref_infonce_accuracy(q, k)
  assert 0.0 < float(acc) < 1.0
  grads = jax.grad(infonce.infonce_loss, argnums=(0, 1))(a, b, tau)
  _assert_grads_close(grads, ref_infonce_grad(q, k, tau), rtol=1e-4, atol_scale=1e-5)


def test_infonce_has_moco_v3_two_tau_factor():
  q, k = _pair(16, 8, seed=43, noise=1.0)
  a, b = jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32)
  # At tau = 1 the loss is twice the plain cross entropy; at tau = 0.2, 0.4 times it.
  np.testing.assert_allclose(float(infonce.infonce_loss(a, b, 1.0)),
                             2.0 * ref_infonce_cross_entropy(q, k, 1.0), rtol=1e-5)
  np.testing.assert_allclose(float(infonce.infonce_loss(a, b, 0.2)),
                             0.4 * ref_infonce_cross_entropy(q, k, 0.2), rtol=1e-5)
  assert not np.isclose(0.4 * ref_infonce_cross_entropy(q, k, 0.2),
                        ref_infonce_cross_entropy(q, k, 0.2), rtol=0.1)


# ---------------------------------------------------------------------------------------
# VICReg.
# ---------------------------------------------------------------------------------------


def test_vicreg_float64_matches_reference(x64):
  z1, z2 = _vicreg_pair(16, 12, seed=51)
  a, b = jnp.asarray(z1, jnp.float64), jnp.asarray(z2, jnp.float64)
  loss = vicreg.vicreg_loss(a, b)
  assert loss.dtype == jnp.float64
  np.testing.assert_allclose(float(loss), ref_vicreg(z1, z2), rtol=1e-12)
  terms = vicreg.vicreg_terms(a, b)
  for name, value in ref_vicreg_terms(z1, z2).items():
    assert value > 0, name  # Every term contributes.
    np.testing.assert_allclose(float(terms[name]), value, rtol=1e-12)
  grads = jax.grad(vicreg.vicreg_loss, argnums=(0, 1))(a, b)
  _assert_grads_close(grads, _finite_difference_grad(ref_vicreg, z1, z2), rtol=1e-6,
                      atol_scale=1e-8)


def test_vicreg_float32_matches_reference():
  z1, z2 = _vicreg_pair(16, 24, seed=52)
  a, b = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
  np.testing.assert_allclose(float(vicreg.vicreg_loss(a, b)), ref_vicreg(z1, z2), rtol=1e-5)
  grads = jax.grad(vicreg.vicreg_loss, argnums=(0, 1))(a, b)
  _assert_grads_close(grads, _finite_difference_grad(ref_vicreg, z1, z2), rtol=1e-4,
                      atol_scale=1e-5)


def test_vicreg_weights_and_terms_gradients(x64):
  z1, z2 = _vicreg_pair(16, 8, seed=53)
  a, b = jnp.asarray(z1, jnp.float64), jnp.asarray(z2, jnp.float64)
  np.testing.assert_allclose(float(vicreg.vicreg_loss(a, b, 2.0, 3.0, 5.0)),
                             ref_vicreg(z1, z2, 2.0, 3.0, 5.0), rtol=1e-12)
  # Each term's gradient on its own, so that a wrong term cannot hide behind a weight.
  for name in ("invariance", "variance", "covariance"):
    grads = jax.grad(lambda x, y, name=name: vicreg.vicreg_terms(x, y)[name],
                     argnums=(0, 1))(a, b)
    fd = _finite_difference_grad(lambda x, y, name=name: ref_vicreg_terms(x, y)[name],
                                 z1, z2)
    _assert_grads_close(grads, fd, rtol=1e-6, atol_scale=1e-8)


# ---------------------------------------------------------------------------------------
# Sharded InfoNCE and VICReg over 8 simulated CPU devices.
# ---------------------------------------------------------------------------------------


def _put(mesh, *arrays):
  sharding = NamedSharding(mesh, P("data"))
  return [jax.device_put(jnp.asarray(x, jnp.float32), sharding) for x in arrays]


@pytest.mark.parametrize("tau", (0.2, 1.0))
def test_sharded_infonce_matches_single_device(mesh, tau):
  q, k = _pair(N, D, seed=61, noise=1.2)
  a, b = _put(mesh, q, k)
  loss, acc = jax.jit(lambda x, y: infonce.sharded_infonce(x, y, tau, mesh))(a, b)
  single = jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32)
  ref_loss, ref_acc = infonce.infonce_with_accuracy(*single, tau)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  assert float(acc) == float(ref_acc) == ref_infonce_accuracy(q, k)
  assert 0.0 < float(acc) < 1.0  # Labels at the right global offsets, or this would drop.
  np.testing.assert_allclose(float(loss), ref_infonce(q, k, tau), rtol=1e-5)

  grads = jax.jit(jax.grad(lambda x, y: infonce.sharded_infonce(x, y, tau, mesh)[0],
                           argnums=(0, 1)))(a, b)
  single_grads = jax.grad(infonce.infonce_loss, argnums=(0, 1))(*single, tau)
  for g, r in zip(grads, single_grads):
    assert g.shape == (N, D)
    assert _rel_err(g, r) < 1e-6
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-7)
  _assert_grads_close(grads, ref_infonce_grad(q, k, tau), rtol=1e-4, atol_scale=1e-5)


@pytest.mark.parametrize("d", (16, 12))  # 12: columns padded to 16 for 8 devices.
def test_sharded_vicreg_matches_single_device(mesh, d):
  z1, z2 = _vicreg_pair(N, d, seed=62 + d)
  a, b = _put(mesh, z1, z2)
  single = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
  terms = jax.jit(lambda x, y: vicreg.sharded_vicreg_terms(x, y, mesh))(a, b)
  single_terms = vicreg.vicreg_terms(*single)
  ref_terms = ref_vicreg_terms(z1, z2)
  for name, value in ref_terms.items():
    np.testing.assert_allclose(float(terms[name]), float(single_terms[name]), rtol=1e-5)
    np.testing.assert_allclose(float(terms[name]), value, rtol=1e-5)
  loss = jax.jit(lambda x, y: vicreg.sharded_vicreg(x, y, mesh))(a, b)
  np.testing.assert_allclose(float(loss), float(vicreg.vicreg_loss(*single)), rtol=1e-6)
  np.testing.assert_allclose(float(loss), ref_vicreg(z1, z2), rtol=1e-5)

  grads = jax.jit(jax.grad(lambda x, y: vicreg.sharded_vicreg(x, y, mesh),
                           argnums=(0, 1)))(a, b)
  single_grads = jax.grad(vicreg.vicreg_loss, argnums=(0, 1))(*single)
  for g, r in zip(grads, single_grads):
    assert g.shape == (N, d)
    # Not multiplied by the device count, nor missing the other devices' share.
    assert _rel_err(g, r) < 1e-5
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-6)
  _assert_grads_close(grads, _finite_difference_grad(ref_vicreg, z1, z2), rtol=1e-4,
                      atol_scale=1e-5)


def test_sharded_vicreg_terms_gradients(mesh):
  # The three terms' gradients separately (one wrong term could hide in the weighted sum).
  z1, z2 = _vicreg_pair(N, 8, seed=63)
  a, b = _put(mesh, z1, z2)
  single = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
  for name in ("invariance", "variance", "covariance"):
    grads = jax.jit(jax.grad(lambda x, y, name=name: vicreg.sharded_vicreg_terms(
        x, y, mesh)[name], argnums=(0, 1)))(a, b)
    single_grads = jax.grad(lambda x, y, name=name: vicreg.vicreg_terms(x, y)[name],
                            argnums=(0, 1))(*single)
    for g, r in zip(grads, single_grads):
      assert _rel_err(g, r) < 1e-5, name


def _dot_shapes(fn, *args):
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  return set(re.findall(r"f32\[(\d+),(\d+)\]\{[^}]*\} dot\(", hlo))


def test_sharded_infonce_logits_are_local_queries_by_global_keys(mesh):
  a, b = _put(mesh, *_pair(N, D, seed=64))
  shapes = _dot_shapes(lambda x, y: infonce.sharded_infonce(x, y, 0.2, mesh)[0], a, b)
  assert (str(N // NUM_DEVICES), str(N)) in shapes, shapes
  assert (str(N), str(N)) not in shapes, shapes


def test_sharded_vicreg_covariance_is_split_by_rows(mesh):
  d = 16
  a, b = _put(mesh, *_vicreg_pair(N, d, seed=65))
  shapes = _dot_shapes(lambda x, y: vicreg.sharded_vicreg(x, y, mesh), a, b)
  assert (str(d // NUM_DEVICES), str(d)) in shapes, shapes
  assert (str(d), str(d)) not in shapes, shapes


# ---------------------------------------------------------------------------------------
# Matmul precision: the contrastive logits' matmuls at full float32 on every backend (TPU's
# DEFAULT rounds float32 operands to bfloat16; CPU does not, so the values above cannot
# show it: the lowered program can).
# ---------------------------------------------------------------------------------------


def _dot_precisions(fn, *args):
  """The precision config of every dot_general in fn's value and gradient, lowered."""
  text = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).as_text()
  return re.findall(r"stablehlo\.dot_general .*?precision = \[(\w+), (\w+)\]", text)


SINGLE_DEVICE_LOSSES = {
    "nt_xent": lambda x, y: nt_xent.nt_xent(x, y, 0.5),
    "infonce": lambda x, y: infonce.infonce_loss(x, y, 0.2),
}
SHARDED_LOSSES = {
    "nt_xent": lambda x, y, mesh: nt_xent.sharded_nt_xent(x, y, 0.5, mesh)[0],
    "infonce": lambda x, y, mesh: infonce.sharded_infonce(x, y, 0.2, mesh)[0],
}


@pytest.mark.parametrize("name", sorted(SINGLE_DEVICE_LOSSES))
def test_embedding_matmuls_at_highest_precision(name):
  z = jnp.ones((N, D), jnp.float32)
  precisions = _dot_precisions(SINGLE_DEVICE_LOSSES[name], z, z)
  # The forward matmul and its two transposes in the backward pass.
  assert len(precisions) >= 3, precisions
  assert set(precisions) == {("HIGHEST", "HIGHEST")}, precisions


@pytest.mark.parametrize("name", sorted(SHARDED_LOSSES))
def test_sharded_embedding_matmuls_at_highest_precision(mesh, name):
  a, b = _put(mesh, *_pair(N, D, seed=66))
  precisions = _dot_precisions(functools.partial(SHARDED_LOSSES[name], mesh=mesh), a, b)
  assert len(precisions) >= 3, precisions
  assert set(precisions) == {("HIGHEST", "HIGHEST")}, precisions
