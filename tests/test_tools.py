import functools
import gc
import json
import pathlib
import time
import tracemalloc
import types
import warnings

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
import zstandard

import tools
import wrappers


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


def tanh_normal(mean, std):
  import tensorflow_probability as tfp
  tfd = tfp.distributions
  dist = tfd.TransformedDistribution(tfd.Normal(mean, std), tools.ClippedTanh())
  return tools.SampleDist(tfd.Independent(dist, 1))


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
    log_prob = tools.UnitNormal(loc_t, 3).log_prob(x_t)
    loss = tf.reduce_sum(log_prob * weight)
  # log N(x; loc, 1) summed over 4 x 5 x 3 values; d/dloc = x - loc, d/dx = loc - x.
  expected = np.sum(-0.5 * (x - loc) ** 2 - 0.5 * np.log(2 * np.pi), (2, 3, 4))
  np.testing.assert_allclose(log_prob.numpy(), expected, rtol=1e-5)
  upstream = weight[..., None, None, None]
  np.testing.assert_allclose(tape.gradient(loss, loc_t).numpy(), upstream * (x - loc), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(tape.gradient(loss, x_t).numpy(), upstream * (loc - x), rtol=1e-5, atol=1e-6)
  dist = tools.UnitNormal(loc_t, 3)
  assert dist.event_shape == (4, 5, 3) and dist.batch_shape == (2, 3)
  np.testing.assert_array_equal(dist.mode().numpy(), loc_t.numpy())


def test_one_hot_sample_is_one_hot_with_straight_through_gradient():
  logits = tf.Variable([[0.1, 2.0, -1.0]])
  with tf.GradientTape() as tape:
    sample = tools.OneHotDist(logits).sample()
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
    sample = tools.OneHotDist(logits, 'score').sample()
    loss = tf.reduce_sum(sample * tf.constant([w], tf.float32))
  np.testing.assert_array_equal(np.sort(sample.numpy()[0]), [0.0, 0.0, 1.0])  # exp(0) leaves it one-hot.
  k = int(np.argmax(sample.numpy()[0]))
  # d (w_k e^{log p_k - stop(log p_k)}) = w_k d log p_k = w_k (e_k - probs) for softmax logits.
  probs = tf.nn.softmax(logits).numpy()[0]
  np.testing.assert_allclose(tape.gradient(loss, logits).numpy()[0], w[k] * (np.eye(3)[k] - probs), rtol=1e-5)


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


def random_episode(length, rng, action_size=2):
  return dict(
      image=rng.integers(0, 256, (length, 64, 64, 3), dtype=np.uint8),
      action=rng.uniform(-1, 1, (length, action_size)).astype(np.float32),
      reward=rng.normal(size=length).astype(np.float32),
      discount=np.ones(length, np.float32),
      position=rng.normal(size=(length, 3)).astype(np.float32))


def test_episode_round_trip_keeps_dtypes_keys_and_length(tmp_path):
  episode = random_episode(7, np.random.default_rng(0))
  filename = tools.save_episode(tmp_path, episode)
  assert filename.name.endswith('-7.npz')
  assert not [f for f in tmp_path.iterdir() if f.suffix != '.npz']
  with np.load(filename, allow_pickle=False) as data:
    assert set(data.keys()) == set(episode)
    for key, value in episode.items():
      assert data[key].dtype == value.dtype
      np.testing.assert_array_equal(data[key], value)


def test_count_steps_sums_transitions_times_action_repeat(tmp_path):
  rng = np.random.default_rng(0)
  for length in (11, 21, 6):
    tools.save_episode(tmp_path, random_episode(length, rng))
  assert tools.count_steps(tmp_path, action_repeat=2) == (10 + 20 + 5) * 2
  assert tools.count_steps(tmp_path / 'missing', action_repeat=2) == 0


class ShortLives:
  """A game of 8x8 images that loses a life (done, discount 0) at every third step
  and goes on after it, as Atari does."""

  act_space = wrappers.Box(-1, 1, (1,))
  obs_space = {'image': wrappers.Box(0, 255, (8, 8, 3), np.uint8)}

  def reset(self):
    self.steps = 0
    return {'image': np.zeros((8, 8, 3), np.uint8)}

  def step(self, action):
    self.steps += 1
    done = self.steps % 3 == 0
    return {'image': np.full((8, 8, 3), self.steps, np.uint8)}, 1.0, done, {'discount': np.array(0.0 if done else 1.0, np.float32)}


def test_a_prefill_of_short_lives_gives_training_windows_that_end_at_their_terminals(tmp_path):
  def prefill(folder, min_rows):
    game = wrappers.MinimumLength(ShortLives(), min_rows - 1) if min_rows else ShortLives()
    env = wrappers.Parallel(lambda: wrappers.Collect(wrappers.TimeLimit(game, 1000)), 'none')
    random = lambda obs, reset, state: (np.random.uniform(-1, 1, (1, 1)).astype(np.float32), None)
    wrappers.simulate(random, [env], steps=100, callbacks=[functools.partial(tools.save_episode, folder)])
    episodes = tools.Episodes(folder)
    episodes.update()
    return episodes
  short = prefill(tmp_path / 'short', 0)  # Lives of 3 steps: 4 rows, shorter than a window of 10.
  with pytest.raises(ValueError, match='batch_length=10'):
    short.choose(np.random.default_rng(0), 10)
  episodes = prefill(tmp_path / 'kept', 10)  # Losses at steps 3 and 6 pass; the one at 9 ends it.
  assert {e.length for e in episodes.episodes.values()} == {10}
  batch = next(iter(tools.make_dataset(episodes, 4, 10)))
  np.testing.assert_array_equal(batch['discount'].numpy(), np.tile([1.0] * 9 + [0.0], (4, 1)))


def test_dataset_windows_have_shapes_and_never_cross_episodes(tmp_path):
  rng = np.random.default_rng(0)
  for index, length in enumerate((12, 30, 5)):
    episode = random_episode(length, rng)
    # Mark each row with its episode and row so windows can be traced back.
    episode['reward'] = (100 * index + np.arange(length)).astype(np.float32)
    tools.save_episode(tmp_path, episode)
  episodes = tools.Episodes(tmp_path)
  dataset = tools.make_dataset(episodes, batch_size=8, batch_length=10)
  for batch in dataset.take(20):
    assert batch['image'].shape == (8, 10, 64, 64, 3)
    assert batch['image'].dtype == tf.uint8
    assert batch['action'].shape == (8, 10, 2)
    assert batch['reward'].shape == (8, 10)
    reward = batch['reward'].numpy()
    # Consecutive rows of one episode: ids increase by exactly one.
    np.testing.assert_array_equal(np.diff(reward, axis=1), 1)
    # The 5-row episode (ids 200+) is too short for a window of 10.
    assert (reward < 200).all()


def save_constant_reward_episode(directory, reward, rng):
  """Save a random 10-row episode whose every reward is `reward`, to tell it apart."""
  episode = random_episode(10, rng)
  episode['reward'][:] = reward
  tools.save_episode(directory, episode)


def test_dataset_sees_episodes_written_later(tmp_path):
  rng = np.random.default_rng(0)
  save_constant_reward_episode(tmp_path, 0, rng)
  episodes = tools.Episodes(tmp_path)
  batches = iter(tools.make_dataset(episodes, batch_size=1, batch_length=10, rescan_every=5))
  save_constant_reward_episode(tmp_path, 1, rng)
  seen = {float(next(batches)['reward'][0, 0]) for _ in range(60)}
  assert seen == {0.0, 1.0}


class CountingEpisodes(tools.Episodes):
  """Episodes that count the windows chosen from them."""

  def __init__(self, directory):
    super().__init__(directory)
    self.chosen = 0

  def choose(self, *args, **kwargs):
    self.chosen += 1
    return super().choose(*args, **kwargs)


@pytest.mark.parametrize('read_ahead', [False, True])
def test_dataset_reads_ahead_only_when_asked_to(tmp_path, read_ahead):
  tools.save_episode(tmp_path, random_episode(20, np.random.default_rng(0)))
  episodes = CountingEpisodes(tmp_path)
  batches = iter(tools.make_dataset(episodes, batch_size=3, batch_length=10, read_ahead=read_ahead))
  next(batches)
  time.sleep(1.0)  # Time for a background thread to choose more windows.
  # make_dataset chooses one window to learn the shapes.
  if read_ahead:
    assert episodes.chosen > 1 + 3
  else:
    assert episodes.chosen == 1 + 3


def test_dataset_without_read_ahead_sees_a_new_episode_at_the_next_rescan(tmp_path):
  rng = np.random.default_rng(0)
  save_constant_reward_episode(tmp_path, 0, rng)
  episodes = tools.Episodes(tmp_path)
  batches = iter(tools.make_dataset(episodes, batch_size=1, batch_length=10, rescan_every=4, read_ahead=False))
  rewards = [float(next(batches)['reward'][0, 0]) for _ in range(3)]
  save_constant_reward_episode(tmp_path, 1, rng)
  time.sleep(0.5)
  # Window 4 still comes from the first scan; the rescan before window 5 finds the second.
  rewards += [float(next(batches)['reward'][0, 0]) for _ in range(40)]
  assert rewards[:4] == [0.0] * 4
  assert 1.0 in rewards[4:]


def smooth_episode(length, rng):
  """An episode whose frames compress like rendered ones: a smooth gradient
  moving one pixel a step, with sparse noise."""
  episode = random_episode(length, rng)
  rows = np.arange(64)[:, None, None] * np.array([3, 2, 1]) + np.arange(length)[:, None, None, None]
  frames = np.broadcast_to(rows, (length, 64, 64, 3)) % 256
  noise = rng.random(frames.shape) < 0.02
  episode['image'] = np.where(noise, rng.integers(0, 256, frames.shape), frames).astype(np.uint8)
  return episode


@pytest.mark.parametrize('chunk', [1, 4, 25])
def test_stored_episode_windows_are_exactly_the_stored_rows(chunk):
  episode = random_episode(23, np.random.default_rng(0))
  stored = tools.StoredEpisode(episode, chunk)
  assert stored.length == 23
  for length in (1, 4, 10, 23):
    for start in range(23 - length + 1):
      window = stored.window(start, length)
      assert set(window) == set(episode)
      for key, value in episode.items():
        assert window[key].dtype == value.dtype
        np.testing.assert_array_equal(window[key], value[start: start + length])


def test_store_reports_its_bytes_the_compressed_chunks_plus_arrays(tmp_path):
  rng = np.random.default_rng(0)
  saved = [smooth_episode(length, rng) for length in (30, 51, 7)]
  for episode in saved:
    tools.save_episode(tmp_path, episode)
  tools.Episodes(tmp_path).update()  # The first load imports modules (zip codecs): not counted.
  episodes = tools.Episodes(tmp_path, chunk=10)
  # Count only what was allocated from tools.py (deep tracebacks), not what other
  # threads of the test process allocate meanwhile.
  tracemalloc.start(100)
  episodes.update()
  gc.collect()  # Cycles the loader left behind.
  snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, tools.__file__, all_frames=True)])
  tracemalloc.stop()
  held = sum(stat.size for stat in snapshot.statistics('filename'))
  # Independently: zstd level 9 of every 10 frames, plus the other stored keys
  # (the loader keeps the keys of ALGORITHM 7.1 only, not `position`).
  expected = sum(
      len(zstandard.compress(e['image'][i: i + 10].tobytes(), 9)) for e in saved for i in range(0, len(e['image']), 10))
  expected += sum(e[key].nbytes for e in saved for key in ('action', 'reward', 'discount'))
  assert episodes.nbytes() == expected
  raw = sum(e[key].nbytes for e in saved for key in ('image', 'action', 'reward', 'discount'))
  assert episodes.nbytes() < raw / 3  # The frames compress.
  # What Python allocated and still holds: the reported bytes plus small objects
  # (names, lists, array headers).
  assert expected <= held <= expected + 10_000, held - expected


def test_dataset_chooses_episodes_and_window_starts_uniformly(tmp_path):
  rng = np.random.default_rng(0)
  lengths = (8, 12, 20, 4)  # The 4-row episode is too short for windows of 5.
  for index, length in enumerate(lengths):
    episode = random_episode(length, rng)
    episode['reward'] = (100 * index + np.arange(length)).astype(np.float32)
    tools.save_episode(tmp_path, episode)
  dataset = tools.make_dataset(tools.Episodes(tmp_path), batch_size=100, batch_length=5, seed=1)
  first = np.concatenate([batch['reward'][:, 0].numpy() for batch in dataset.take(60)]).astype(int)
  episode, start = first // 100, first % 100
  counts = np.bincount(episode, minlength=4)
  assert counts[3] == 0
  # Uniform over the 3 long enough episodes, and over each one's length - 5 + 1 starts.
  assert scipy.stats.chisquare(counts[:3]).pvalue > 0.001
  for index, length in enumerate(lengths[:3]):
    starts = np.bincount(start[episode == index], minlength=length - 4)
    assert len(starts) == length - 4
    assert scipy.stats.chisquare(starts).pvalue > 0.001


def test_bad_episode_files_are_skipped_with_one_warning(tmp_path):
  rng = np.random.default_rng(0)
  good = tools.save_episode(tmp_path, random_episode(10, rng))
  data = good.read_bytes()
  (tmp_path / 'a-x-10.npz').write_bytes(data[: len(data) // 2])
  (tmp_path / 'b-x-10.npz').write_bytes(b'')
  missing = random_episode(10, rng)
  del missing['discount']
  np.savez(tmp_path / 'c-x-10.npz', **missing)
  np.savez(tmp_path / 'd-x-10.npz', image=np.array([{'a': 1}] * 10, dtype=object), action=np.zeros((10, 2)), reward=np.zeros(10), discount=np.zeros(10))
  np.savez(tmp_path / 'e-x-12.npz', **random_episode(10, rng))
  episodes = tools.Episodes(tmp_path)
  with pytest.warns(UserWarning) as record:
    episodes.update()
  messages = [str(w.message) for w in record if str(w.message).startswith('Skipping episode')]
  skipped = sorted(pathlib.Path(m.split()[2].rstrip(':')).name for m in messages)
  assert skipped == ['a-x-10.npz', 'b-x-10.npz', 'c-x-10.npz', 'd-x-10.npz', 'e-x-12.npz']
  assert list(episodes.episodes) == [good]
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    episodes.update()  # Each bad file warns once only.


def test_progress_rate_and_eta_by_hand():
  # 2000 env steps in 250 s: 8 env steps/s; 8000 left to the budget: 1000 s.
  assert tools.progress([(0.0, 0), (50.0, 1000), (250.0, 2000)], 10000) == (8.0, 1000.0)
  assert tools.progress([(0.0, 500), (10.0, 500)], 10000) == (None, None)  # No step timed.
  assert tools.progress([(0.0, 0), (10.0, 100)], 50) == (10.0, 0.0)  # Past the budget.


@pytest.mark.parametrize('seconds, text', [(12, '12s'), (250, '4m 10s'), (3900, '1h 05m'), (183600, '2d 03h'), (0.4, '0s')])
def test_duration_shows_the_two_largest_units(seconds, text):
  assert tools.duration(seconds) == text


def test_logger_progress_over_the_last_five_writes_on_a_synthetic_clock(tmp_path, monkeypatch, capsys):
  clock = types.SimpleNamespace(now=0.0)
  monkeypatch.setattr(tools.time, 'time', lambda: clock.now)
  logger = tools.Logger(tmp_path, 0, 100000)  # t = 0 at step 0.
  for k, now in enumerate([100.0, 300.0, 400.0, 500.0, 700.0, 800.0], 1):  # Steps 1000..6000.
    clock.now = now
    logger.step = 1000 * k
    logger.scalar('train/return', 10.0 * k)
    logger.scalar('train/kl', 1.0)
    logger.write(7 * k)
  # The last write sees the points of steps 1000..6000: 5000 env steps in 700 s,
  # 7.142857 env steps/s; 94000 left: 13160 s = 3h 39m 20s.
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert rows[0]['fps'] == pytest.approx(10.0) and rows[0]['eta'] == pytest.approx(9900.0)
  last = rows[-1]
  assert last['step'] == 6000 and last['budget'] == 100000 and last['updates'] == 42
  assert last['fps'] == pytest.approx(5000 / 700) and last['eta'] == pytest.approx(13160.0)
  assert last['train/return'] == 60.0 and last['train/kl'] == 1.0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 6
  assert lines[-1] == '[6000/100000 env steps, 6.0%] 42 updates, 7.1 env steps/s, ETA 3h 39m | train/return 60'
