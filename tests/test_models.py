import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import models


def observe(rssm, embed, action, seed=0):
  tf.random.set_seed(seed)
  return rssm.observe(tf.constant(embed), tf.constant(action))


def sequences(batch, length):
  """Random embeddings (11 dims) and actions (2 dims)."""
  rng = np.random.default_rng(0)
  embed = rng.normal(size=(batch, length, 11)).astype(np.float32)
  return embed, rng.uniform(-1, 1, (batch, length, 2)).astype(np.float32)


def test_rssm_observe_and_imagine_shapes_and_min_std():
  rssm = models.RSSM(stoch=5, deter=7, hidden=9)
  embed, action = sequences(3, 4)
  post, prior = observe(rssm, embed, action)
  for state in (post, prior):
    assert state['mean'].shape == state['std'].shape == state['stoch'].shape == (3, 4, 5)
    assert state['deter'].shape == (3, 4, 7)
    assert float(tf.reduce_min(state['std'])) >= 0.1
  assert rssm.get_feat(post).shape == (3, 4, 12)
  init = {k: v[:, -1] for k, v in post.items()}
  imagined = rssm.imagine(tf.constant(action[:, :2]), init)
  assert imagined['stoch'].shape == (3, 2, 5)
  assert imagined['deter'].shape == (3, 2, 7)


def test_rssm_posterior_depends_on_embedding_and_prior_does_not():
  rssm = models.RSSM(stoch=5, deter=7, hidden=9)
  embed, action = sequences(2, 3)
  post, prior = observe(rssm, embed, action)
  changed = embed.copy()
  changed[:, -1] += 1.0  # Only the last observation differs.
  post2, prior2 = observe(rssm, changed, action)
  for key in ('mean', 'std', 'deter'):
    np.testing.assert_allclose(prior[key].numpy(), prior2[key].numpy(), rtol=1e-6)
  assert not np.allclose(post['mean'][:, -1], post2['mean'][:, -1])
  np.testing.assert_allclose(post['mean'][:, :-1], post2['mean'][:, :-1], rtol=1e-6)
  # The posterior shares the deterministic state of the prior.
  np.testing.assert_array_equal(post['deter'].numpy(), prior['deter'].numpy())


def test_rssm_samples_have_independent_noise_per_batch_element():
  rssm = models.RSSM(stoch=5, deter=7, hidden=9)
  embed = np.zeros((4, 1, 11), np.float32)  # Identical inputs for every element.
  post, _ = observe(rssm, embed, np.zeros((4, 1, 2), np.float32))
  noise = (post['stoch'] - post['mean']) / post['std']
  assert not np.allclose(noise[0], noise[1])


def test_rssm_shared_batch_noise_gives_equal_samples_for_equal_inputs_and_new_noise_each_step():
  rssm = models.RSSM(stoch=5, deter=7, hidden=9, batch_noise='shared')
  embed = np.zeros((4, 3, 11), np.float32)  # Identical inputs for every element.
  post, prior = observe(rssm, embed, np.zeros((4, 3, 2), np.float32))
  for state in (post, prior):
    noise = ((state['stoch'] - state['mean']) / state['std']).numpy()
    np.testing.assert_allclose(noise[1:], np.broadcast_to(noise[:1], noise[1:].shape), atol=1e-5)
    assert not np.allclose(noise[0, 0], noise[0, 1])  # A new vector at every step.
  assert not np.allclose(post['stoch'][0, 0], prior['stoch'][0, 0])  # Prior and posterior draw apart.


def test_rssm_uses_given_noise_exactly():
  rssm = models.RSSM(stoch=5, deter=7, hidden=9)
  embed, action = sequences(3, 4)
  rng = np.random.default_rng(1)
  noise = {k: rng.normal(size=(3, 4, 5)).astype(np.float32) for k in ('prior', 'post')}
  post, prior = rssm.observe(tf.constant(embed), tf.constant(action), noise=noise)
  for key, state in (('post', post), ('prior', prior)):
    expected = state['mean'].numpy() + state['std'].numpy() * noise[key]
    np.testing.assert_allclose(state['stoch'].numpy(), expected, rtol=1e-6, atol=1e-6)
  again, _ = rssm.observe(tf.constant(embed), tf.constant(action), noise=noise)
  np.testing.assert_array_equal(post['stoch'].numpy(), again['stoch'].numpy())


def test_rssm_loops_run_one_step_at_a_time():
  # A step's noise needs nothing from the loop state; only a loop without parallel
  # iterations draws it in step order, the same in every run (--deterministic).
  rssm = models.RSSM(stoch=5, deter=7, hidden=9)
  embed, action = sequences(2, 3)
  observe = tf.function(rssm.observe).get_concrete_function(tf.constant(embed), tf.constant(action))
  init = rssm.initial(2)
  imagine = tf.function(rssm.imagine).get_concrete_function(tf.constant(action), init)
  for function in (observe, imagine):
    loops = [op for op in function.graph.get_operations() if op.type in ('While', 'StatelessWhile')]
    assert loops and all(op.get_attr('parallel_iterations') == 1 for op in loops)


def test_encoder_and_decoder_shapes():
  encoder = models.ConvEncoder(depth=32)
  embed = encoder(tf.zeros([2, 3, 64, 64, 3]))
  assert embed.shape == (2, 3, 1024)
  decoder = models.ConvDecoder(depth=8)
  dist = decoder(tf.zeros([2, 3, 20]))
  assert dist.mean().shape == (2, 3, 64, 64, 3)
  assert dist.log_prob(tf.zeros([2, 3, 64, 64, 3])).shape == (2, 3)


def test_encoder_recomputation_keeps_outputs_and_gradients():
  """The encoder recomputes its first activation in the backward pass; outputs and
  gradients must equal those of the plain conv stack with the same weights."""
  encoder = models.ConvEncoder(depth=4)
  image = tf.random.uniform([2, 3, 64, 64, 3], -0.5, 0.5, seed=1)
  encoder(image)
  layers = [encoder.get(f'h{i}', None) for i in range(4)]

  def plain(image):
    x = tf.reshape(image, [-1, 64, 64, 3])
    for layer in layers:
      x = tf.nn.relu(tf.nn.conv2d(x, layer.kernel, 2, 'VALID') + layer.bias)
    return tf.reshape(x, [2, 3, 128])

  weights = tf.random.normal([2, 3, 128], seed=2)
  results = []
  for fn in (encoder, plain):
    with tf.GradientTape() as tape:
      tape.watch(image)
      embed = fn(image)
      loss = tf.reduce_sum(embed * weights)
    results.append([embed] + tape.gradient(loss, [image, *encoder.trainable_variables]))
  assert len(results[0]) == 10 and all(g is not None for g in results[0])
  for ours, reference in zip(*results):
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('shape, filters, kernel', [
    ((3, 1, 1, 64), 16, 5),  # 1x1 input: one matmul.
    ((3, 5, 5, 16), 8, 5)])  # Keras' own kernel.
def test_conv2d_transpose_matches_keras(shape, filters, kernel):
  x = tf.random.normal(shape, seed=0)
  ours = models.Conv2DTranspose(filters, kernel, 2, activation='relu')
  reference = keras.layers.Conv2DTranspose(filters, kernel, 2, activation='relu')
  ours(x), reference(x)
  rng = np.random.default_rng(0)
  ours.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in ours.weights])
  reference.set_weights(ours.get_weights())
  results = []
  for layer in (ours, reference):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x)
      loss = tf.reduce_sum(y * tf.sin(y))
    results.append([y, *tape.gradient(loss, [x, *layer.trainable_variables])])
  assert results[0][0].shape == (3, (shape[1] - 1) * 2 + kernel, (shape[2] - 1) * 2 + kernel, filters)
  for ours_value, reference_value in zip(*results):
    scale = np.abs(reference_value.numpy()).max()
    np.testing.assert_allclose(ours_value.numpy(), reference_value.numpy(), rtol=1e-4, atol=1e-5 * scale)


def test_decoder_layer_impl_picks_keras_transposed_convs_or_the_matmul_with_the_same_math():
  features = tf.random.normal([2, 3, 20], seed=1)
  keras_decoder, fast_decoder = models.ConvDecoder(depth=8), models.ConvDecoder(depth=8, layers='fast')
  keras_decoder(features), fast_decoder(features)
  for decoder, kind in ((keras_decoder, keras.layers.Conv2DTranspose), (fast_decoder, models.Conv2DTranspose)):
    layers = decoder.named_layers()
    assert [type(layers[f'h{i}']) for i in (2, 3, 4, 5)] == [kind] * 4
  for a, b in zip(fast_decoder.variables, keras_decoder.variables):
    a.assign(b)
  expected, got = keras_decoder(features).mean().numpy(), fast_decoder(features).mean().numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_decoder_log_prob_is_unit_normal_summed_over_pixels():
  decoder = models.ConvDecoder(depth=4)
  features = tf.random.normal([1, 6])
  dist = decoder(features)
  image = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 64, 64, 3)).astype(np.float32)
  mean = dist.mean().numpy()
  expected = np.sum(-0.5 * (image - mean) ** 2 - 0.5 * np.log(2 * np.pi))
  assert float(dist.log_prob(image)[0]) == pytest.approx(expected, rel=1e-5)


def test_dense_heads_distributions():
  features = tf.random.normal([4, 6, 10])
  reward = models.DenseHead((), 2, 16)(features)
  assert reward.mode().shape == (4, 6)
  pcont = models.DenseHead((), 3, 16, 'binary')(features)
  probs = pcont.mean().numpy()
  assert probs.shape == (4, 6) and (probs > 0).all() and (probs < 1).all()


def test_action_head_bounds_and_initial_std():
  head = models.ActionHead(3, layers=2, units=16)
  dist = head(tf.zeros([5, 8]))
  sample = dist.sample()
  assert sample.shape == (5, 3)
  assert np.all(np.abs(sample.numpy()) <= 1)
  # With zero features the pre-tanh std is softplus(bias 0 + softplus^-1(5)) + 1e-4.
  normal = dist.distribution.distribution
  np.testing.assert_allclose(normal.stddev().numpy(), 5.0 + 1e-4, rtol=1e-5)
  onehot = models.ActionHead(4, layers=2, units=16, dist='onehot')(tf.zeros([5, 8]))
  assert sorted(onehot.mode().numpy()[0].tolist()) == [0, 0, 0, 1]


def test_dense_head_normal_std_has_learned_std_above_minimum():
  features = tf.random.normal([4, 6, 10], seed=0)
  head = models.DenseHead((5,), 2, 16, 'normal_std', min_std=0.1)
  dist = head(features)
  mean, std = dist.distribution.loc.numpy(), dist.distribution.scale.numpy()
  assert mean.shape == std.shape == (4, 6, 5)
  assert std.min() >= 0.1 and std.std() > 0  # Varies with the features.
  x = np.random.default_rng(0).normal(size=(4, 6, 5)).astype(np.float32)
  expected = np.sum(-0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi), -1)
  np.testing.assert_allclose(dist.log_prob(x).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize('min_std, init_std, offset', [(0.1, None, 0.0), (0.01, 1.0, np.log(np.e - 1))])
def test_dense_head_learned_std_is_softplus_of_the_output_shifted_by_init_std_plus_min_std(min_std, init_std, offset):
  features = tf.random.normal([7, 10], seed=1)
  head = models.DenseHead((5,), 3, 16, 'normal_std', min_std=min_std, init_std=init_std)
  std = head(features).distribution.scale.numpy()
  x = features.numpy()
  for i in range(3):  # The hidden layers by hand (elu), then the output's second half.
    kernel, bias = head.named_layers()[f'h{i}'].get_weights()
    x = x @ kernel + bias
    x = np.where(x > 0, x, np.expm1(np.minimum(x, 0)))
  kernel, bias = head.named_layers()['out'].get_weights()
  raw = (x @ kernel + bias)[:, 5:]
  np.testing.assert_allclose(std, np.logaddexp(0, raw + offset) + min_std, rtol=1e-5)
