"""The actor's and the decoder's distributions against analytic values."""

import numpy as np
import pytest
import tensorflow as tf

import distributions


def tanh_normal(mean, std):
  import tensorflow_probability as tfp
  tfd = tfp.distributions
  dist = tfd.TransformedDistribution(tfd.Normal(mean, std), distributions.ClippedTanh())
  return distributions.SampleDist(tfd.Independent(dist, 1))


def test_tanh_normal_log_prob_is_change_of_variables():
  mean, std = np.array([0.3, -1.2]), np.array([0.7, 1.5])
  dist = tanh_normal(tf.constant(mean, tf.float32), tf.constant(std, tf.float32))
  y = np.array([0.5, -0.9])
  x = np.arctanh(y)
  normal = -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
  # p(y) = p(x) |dx/dy| with dx/dy = 1 / (1 - y^2).
  expected = np.sum(normal - np.log(1 - y ** 2))
  assert dist.log_prob(tf.constant(y, tf.float32)).numpy() == pytest.approx(expected, rel=1e-4)


def test_tanh_normal_density_integrates_to_one():
  dist = tanh_normal(tf.constant([0.4]), tf.constant([0.8]))
  y = np.linspace(-1, 1, 200001)[1:-1].astype(np.float32)
  density = np.exp(dist.log_prob(y[:, None]).numpy())
  assert np.trapezoid(density, y) == pytest.approx(1.0, abs=1e-3)


def test_tanh_normal_samples_in_open_interval_and_finite_log_prob():
  dist = tanh_normal(tf.constant([[4.9, -4.9, 0.0]]), tf.constant([[5.0, 5.0, 5.0]]))
  sample = dist.sample(1000)
  assert np.all(np.abs(sample.numpy()) <= 1)
  assert np.all(np.isfinite(dist.log_prob(sample).numpy()))
  saturated = tf.constant([[1.0, -1.0, 1.0]])
  assert np.isfinite(dist.log_prob(saturated).numpy()).all()


def test_tanh_normal_mode_near_tanh_mean_for_small_std():
  tf.random.set_seed(0)
  mean = tf.constant([[0.5, -1.0, 2.0]])
  dist = tanh_normal(mean, tf.constant([[0.01, 0.01, 0.01]]))
  np.testing.assert_allclose(dist.mode().numpy(), np.tanh(mean.numpy()), atol=0.01)


def test_tanh_normal_entropy_estimate_matches_numerical_integral():
  tf.random.set_seed(0)
  dist = tanh_normal(tf.constant([0.2]), tf.constant([0.5]))
  y = np.linspace(-1, 1, 200001)[1:-1].astype(np.float32)
  logp = dist.log_prob(y[:, None]).numpy()
  exact = -np.trapezoid(np.exp(logp) * logp, y)
  estimates = [float(dist.entropy()) for _ in range(50)]
  assert np.mean(estimates) == pytest.approx(exact, abs=0.05)


def test_tanh_normal_sample_with_given_noise_is_tanh_of_mean_plus_std_times_noise():
  mean, std = np.array([[0.3, -2.0]], np.float32), np.array([[0.5, 1.5]], np.float32)
  dist = tanh_normal(mean, std)
  noise = np.array([[1.2, -0.4]], np.float32)
  np.testing.assert_allclose(dist.sample(noise=noise).numpy(), np.tanh(mean + std * noise), rtol=1e-6)


def test_unit_normal_log_prob_and_gradients_are_analytic():
  rng = np.random.default_rng(0)
  loc, x = rng.normal(size=(2, 3, 4, 5, 3)), rng.normal(size=(2, 3, 4, 5, 3))
  weight = rng.normal(size=(2, 3))  # A non-uniform upstream gradient.
  loc_t, x_t = tf.constant(loc, tf.float32), tf.constant(x, tf.float32)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([loc_t, x_t])
    log_prob = distributions.UnitNormal(loc_t, 3).log_prob(x_t)
    loss = tf.reduce_sum(log_prob * weight)
  # log N(x; loc, 1) summed over 4 x 5 x 3 values; d/dloc = x - loc, d/dx = loc - x.
  expected = np.sum(-0.5 * (x - loc) ** 2 - 0.5 * np.log(2 * np.pi), (2, 3, 4))
  np.testing.assert_allclose(log_prob.numpy(), expected, rtol=1e-5)
  upstream = weight[..., None, None, None]
  np.testing.assert_allclose(tape.gradient(loss, loc_t).numpy(), upstream * (x - loc), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(tape.gradient(loss, x_t).numpy(), upstream * (loc - x), rtol=1e-5, atol=1e-6)
  dist = distributions.UnitNormal(loc_t, 3)
  assert dist.event_shape == (4, 5, 3) and dist.batch_shape == (2, 3)
  np.testing.assert_array_equal(dist.mode().numpy(), loc_t.numpy())


def test_one_hot_sample_is_one_hot_with_straight_through_gradient():
  logits = tf.Variable([[0.1, 2.0, -1.0]])
  with tf.GradientTape() as tape:
    sample = distributions.OneHotDist(logits).sample()
    loss = tf.reduce_sum(sample * tf.constant([[1.0, 2.0, 3.0]]))
  # sample + probs - stop_gradient(probs) is one-hot up to float32 rounding.
  np.testing.assert_allclose(sorted(sample.numpy()[0].tolist()), [0.0, 0.0, 1.0], atol=1e-6)
  grad = tape.gradient(loss, logits).numpy()
  # The gradient is that of sum(probs * w): softmax Jacobian times w.
  probs = tf.nn.softmax(logits).numpy()[0]
  w = np.array([1.0, 2.0, 3.0])
  np.testing.assert_allclose(grad[0], probs * (w - probs @ w), rtol=1e-5)


def test_one_hot_score_function_sample_is_one_hot_with_the_score_function_gradient():
  logits = tf.Variable([[0.1, 2.0, -1.0]])
  w = np.array([1.0, 2.0, 3.0])
  with tf.GradientTape() as tape:
    sample = distributions.OneHotDist(logits, 'score').sample()
    loss = tf.reduce_sum(sample * tf.constant([w], tf.float32))
  np.testing.assert_array_equal(np.sort(sample.numpy()[0]), [0.0, 0.0, 1.0])  # exp(0) leaves it one-hot.
  k = int(np.argmax(sample.numpy()[0]))
  # d (w_k e^{log p_k - stop(log p_k)}) = w_k d log p_k = w_k (e_k - probs) for softmax logits.
  probs = tf.nn.softmax(logits).numpy()[0]
  np.testing.assert_allclose(tape.gradient(loss, logits).numpy()[0], w[k] * (np.eye(3)[k] - probs), rtol=1e-5)
