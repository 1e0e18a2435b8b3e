"""The update's math: input scaling, lambda-returns, the contrastive bound."""

import numpy as np
import pytest
import tensorflow as tf

import tools


def numpy_lambda_return(reward, value, pcont, bootstrap, lambda_):
  """Plain loop over paper eq. 6, written independently of tools.lambda_return."""
  horizon = len(reward)
  returns = np.zeros_like(reward)
  next_return = bootstrap
  for t in reversed(range(horizon)):
    next_value = value[t + 1] if t + 1 < horizon else bootstrap
    returns[t] = reward[t] + pcont[t] * ((1 - lambda_) * next_value + lambda_ * next_return)
    next_return = returns[t]
  return returns


def test_image_to_float_divides_as_ieee_division_also_where_grappler_rewrites_a_traced_division():
  pixels = np.arange(256, dtype=np.uint8)
  exact = np.arange(256, dtype=np.float32) / np.float32(255) - np.float32(0.5)  # NumPy: IEEE float32 division.
  assert exact[0] == -0.5 and exact[255] == 0.5
  np.testing.assert_array_equal(tf.function(tools.image_to_float)(pixels).numpy(), exact)
  np.testing.assert_array_equal(tools.image_to_float(pixels).numpy(), exact)
  # What the plain formula gives once traced: x * (1 / 255), off by one step on 111 values.
  rewritten = tf.function(lambda x: tf.cast(x, tf.float32) / 255.0 - 0.5)(pixels).numpy()
  assert (rewritten != exact).sum() == 111
  assert np.abs(rewritten - exact).max() <= np.spacing(np.float32(0.5))


@pytest.mark.parametrize('lambda_', [0.0, 0.5, 0.95, 1.0])
def test_lambda_return_matches_numpy_loop(lambda_):
  rng = np.random.default_rng(0)
  reward, value, pcont = (rng.normal(size=(14, 7)).astype(np.float32) for _ in range(3))
  pcont = np.abs(pcont)
  bootstrap = rng.normal(size=7).astype(np.float32)
  expected = numpy_lambda_return(reward, value, pcont, bootstrap, lambda_)
  actual = tools.lambda_return(reward, value, pcont, bootstrap, lambda_).numpy()
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_lambda_return_special_cases():
  rng = np.random.default_rng(1)
  reward, value = rng.normal(size=(2, 6)).astype(np.float32)
  gamma = np.full(6, 0.9, np.float32)
  bootstrap = np.float32(2.0)
  # lambda = 0: one-step TD targets r_t + gamma v_{t+1}.
  td = tools.lambda_return(reward, value, gamma, bootstrap, 0.0).numpy()
  np.testing.assert_allclose(td, reward + 0.9 * np.append(value[1:], bootstrap), rtol=1e-5)
  # lambda = 1: discounted Monte Carlo return bootstrapped with v_T.
  mc = tools.lambda_return(reward, value, gamma, bootstrap, 1.0).numpy()
  expected = [sum(0.9 ** (k - t) * reward[k] for k in range(t, 6)) + 0.9 ** (6 - t) * bootstrap for t in range(6)]
  np.testing.assert_allclose(mc, expected, rtol=1e-5)


def test_lambda_return_three_steps_by_hand():
  # r = (1, 2, 3), v = (10, 20, 30), bootstrap 40, c = 0.5, lambda = 0.5:
  # R_2 = 3 + 0.5 * 40 = 23
  # R_1 = 2 + 0.5 * (0.5 * 30 + 0.5 * 23) = 15.25
  # R_0 = 1 + 0.5 * (0.5 * 20 + 0.5 * 15.25) = 9.8125
  returns = tools.lambda_return(
      tf.constant([1.0, 2.0, 3.0]), tf.constant([10.0, 20.0, 30.0]),
      tf.constant([0.5, 0.5, 0.5]), tf.constant(40.0), 0.5)
  np.testing.assert_allclose(returns.numpy(), [9.8125, 15.25, 23.0], rtol=1e-6)


def numpy_log_q(z, mean, std):
  """log Normal(z_i; mean_j, std_j) summed over dimensions at [i, j], one pair at a time."""
  z, mean, std = (np.asarray(x, np.float64) for x in (z, mean, std))
  return np.array([[np.sum(-0.5 * ((zi - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi))
                    for m, s in zip(mean, std)] for zi in z])


def test_log_density_matrix_is_accurate_at_the_scales_of_whole_model_states():
  """States of 230 dims with deterministic parts near 0.8 and stds down to 0.01 (the
  TF1 state model's floor): in float32 the expanded square would cancel by 0.1 nats."""
  rng = np.random.default_rng(0)
  z = np.concatenate([rng.normal(size=(40, 30)), 0.8 + 0.1 * rng.uniform(-1, 1, (40, 200))], 1).astype(np.float32)
  mean = (z + 0.02 * rng.normal(size=z.shape)).astype(np.float32)
  std = rng.uniform(0.01, 0.05, z.shape).astype(np.float32)
  expected = numpy_log_q(z, mean, std)
  got = tools.log_density_matrix(tf.constant(z), tf.constant(mean), tf.constant(std)).numpy()
  assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()
  np.testing.assert_allclose(np.diag(got), np.diag(expected), rtol=1e-5)


def test_info_nce_normalises_over_images_for_each_state_as_eq_12_writes_it():
  rng = np.random.default_rng(1)
  log_q = rng.normal(size=(6, 6))
  expected = [log_q[i, i] - np.log(np.exp(log_q[i]).sum()) for i in range(6)]
  np.testing.assert_allclose(tools.info_nce(tf.constant(log_q)).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize('batch, length, sequences, shifts', [(12, 40, 10, 30), (3, 6, 10, 30), (5, 8, 4, 3)])
def test_info_nce_window_is_the_tf1_codes_rolled_negatives_over_states_for_each_image(batch, length, sequences, shifts):
  """The authors' TF1 loop, in NumPy: for each window index a roll of the states over
  batch and time, scored under every observation's state model, then the positive
  minus the log-sum-exp over the window."""
  rng = np.random.default_rng(2)
  z = rng.normal(size=(batch, length, 3))
  mean, std = z + 0.5 * rng.normal(size=z.shape), rng.uniform(0.5, 1.5, z.shape)
  log_prob = lambda states: np.sum(-0.5 * ((states - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi), -1)
  sequences, shifts = min(sequences, batch), min(shifts, length)
  scores = []
  for index in range(sequences * shifts):
    batch_shift = index // shifts - sequences // 2
    time_shift = index % shifts - shifts // 2
    scores.append(log_prob(np.roll(np.roll(z, batch_shift, 0), time_shift, 1)))
  expected = log_prob(z) - np.log(np.exp(np.stack(scores)).sum(0))
  flat = lambda x: tf.constant(x.reshape(batch * length, -1))
  log_q = tools.log_density_matrix(flat(z), flat(mean), flat(std))
  got = tools.info_nce_window(log_q, batch, length, sequences, shifts).numpy()
  np.testing.assert_allclose(got, expected.reshape(-1), rtol=1e-4, atol=1e-4)
