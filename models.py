"""Networks of the world model (ALGORITHM 2) and of behavior learning (ALGORITHM 4-5)."""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras as keras

import distributions

tfd = tfp.distributions


class Module(tf.Module):
  """Creates its layers lazily by name on first use, so `__call__` reads like the
  equations it implements."""

  def get(self, name, ctor, *args, **kwargs):
    if not hasattr(self, '_layers'):
      self._layers = {}
    if name not in self._layers:
      self._layers[name] = ctor(*args, **kwargs)
    return self._layers[name]

  def named_layers(self):
    """{name: layer} of the layers created so far (the golden file's weight names)."""
    return dict(getattr(self, '_layers', {}))


def as_float32(x):
  """Distributions and losses stay float32 under mixed precision (ALGORITHM 6)."""
  return tf.cast(x, tf.float32)


class RSSM(Module):
  """Recurrent state-space model: state = dict(mean, std, stoch, deter) (ALGORITHM 2.1)."""

  def __init__(self, stoch=30, deter=200, hidden=200, act='elu', min_std=0.1, batch_noise='independent'):
    super().__init__()
    self._stoch = stoch
    self._deter = deter
    self._hidden = hidden
    self._act = act
    self._min_std = min_std
    self._batch_noise = batch_noise
    self._cell = keras.layers.GRUCell(deter)

  def named_layers(self):
    return {**super().named_layers(), 'gru': self._cell}

  def initial(self, batch_size):
    dtype = keras.mixed_precision.global_policy().compute_dtype
    zeros = lambda size: tf.zeros([batch_size, size], dtype)
    return dict(mean=zeros(self._stoch), std=zeros(self._stoch),
                stoch=zeros(self._stoch), deter=zeros(self._deter))

  def observe(self, embed, action, state=None, noise=None):
    """Posterior and prior states [B, T, ...] of a sequence; action[:, t] led to
    the observation embedded in embed[:, t] (ALGORITHM 7.1 alignment). `noise`, if given,
    is dict(prior=, post=) of the standard-normal draws [B, T, stoch] to use."""
    if state is None:
      state = self.initial(tf.shape(action)[0])
    inputs = tf.nest.map_structure(swap, dict(action=action, embed=embed, noise=noise or {}))
    post, prior = sequential_scan(
        lambda prev, x: self.obs_step(prev[0], x['action'], x['embed'], x['noise']),
        inputs, (state, state))
    return tf.nest.map_structure(swap, post), tf.nest.map_structure(swap, prior)

  def imagine(self, action, state=None):
    """Prior states [B, T, ...] from open-loop actions [B, T, A]."""
    if state is None:
      state = self.initial(tf.shape(action)[0])
    prior = sequential_scan(self.img_step, swap(action), state)
    return tf.nest.map_structure(swap, prior)

  def get_feat(self, state):
    return tf.concat([state['stoch'], state['deter']], -1)

  def get_dist(self, state):
    return tfd.MultivariateNormalDiag(as_float32(state['mean']), as_float32(state['std']))

  def obs_step(self, prev_state, prev_action, embed, noise=None):
    """`noise`: optional dict(prior=, post=) of standard-normal draws [B, stoch]."""
    noise = noise or {}
    prior = self.img_step(prev_state, prev_action, noise.get('prior'))
    x = tf.concat([prior['deter'], embed], -1)
    x = self.get('obs1', keras.layers.Dense, self._hidden, self._act)(x)
    post = self._stoch_state(self.get('obs2', keras.layers.Dense, 2 * self._stoch)(x), noise.get('post'))
    post['deter'] = prior['deter']
    return post, prior

  def img_step(self, prev_state, prev_action, noise=None):
    prev_action = tf.cast(prev_action, prev_state['stoch'].dtype)
    x = tf.concat([prev_state['stoch'], prev_action], -1)
    x = self.get('img1', keras.layers.Dense, self._hidden, self._act)(x)
    _, (deter,) = self._cell(x, [prev_state['deter']])
    x = self.get('img2', keras.layers.Dense, self._hidden, self._act)(deter)
    prior = self._stoch_state(self.get('img3', keras.layers.Dense, 2 * self._stoch)(x), noise)
    prior['deter'] = deter
    return prior

  def _stoch_state(self, x, noise=None):
    """Reparameterized sample mean + std * noise; the noise is drawn here unless given."""
    mean, std = tf.split(x, 2, -1)
    std = tf.nn.softplus(std) + self._min_std
    if noise is None:
      noise = self.noise(tf.shape(mean), mean.dtype)
    stoch = mean + std * tf.cast(noise, mean.dtype)
    return dict(mean=mean, std=std, stoch=stoch)

  def noise(self, shape, dtype=tf.float32):
    """Standard-normal draws of `shape` [B, ...] for the stochastic state: independent
    for every batch element (ALGORITHM 2.5), or with batch_noise 'shared' one vector that
    every batch element uses, as the authors' TF2 code drew it (ALGORITHM 12.1)."""
    if self._batch_noise == 'independent':
      return tf.random.normal(shape, dtype=dtype)
    shared = tf.random.normal(tf.concat([[1], shape[1:]], 0), dtype=dtype)
    return tf.broadcast_to(shared, shape)


def sequential_scan(step, elems, initializer):
  """tf.scan that runs its steps strictly one after another. A step's random draw
  has a static shape and needs nothing from the loop state, so with tf.scan's
  default of 10 parallel iterations the draws of later steps may run first, and
  which step gets which noise would depend on thread timing (--deterministic)."""
  return tf.scan(step, elems, initializer, parallel_iterations=1)


def swap(x):
  """Exchange the first two axes (batch-major <-> time-major)."""
  return tf.transpose(x, [1, 0] + list(range(2, len(x.shape))))


class ConvEncoder(Module):
  """64x64x3 -> 4 convs, kernel 4, stride 2 -> flattened 32 x depth (ALGORITHM 2.2)."""

  def __init__(self, depth=32, act='relu'):
    super().__init__()
    self._depth = depth
    self._act = act

  def __call__(self, image):
    x = tf.reshape(image, [-1] + image.shape[-3:].as_list())
    # The first activation is the largest one (0.3 GB at the paper config): the
    # backward pass recomputes it from the image rather than keeping it. Only the
    # first conv runs twice, since the second one's gradients need only its input.
    x = keras.activations.get(self._act)(tf.recompute_grad(self._first_two_convs)(x))
    for i in (2, 3):
      x = self._conv(i, self._act)(x)
    return tf.reshape(x, tf.concat([tf.shape(image)[:-3], [32 * self._depth]], 0))

  def _first_two_convs(self, x):
    return self._conv(1, None)(self._conv(0, self._act)(x))

  def _conv(self, i, act):
    return self.get(f'h{i}', keras.layers.Conv2D, 2 ** i * self._depth, 4, 2, activation=act)


class Conv2DTranspose(keras.layers.Conv2DTranspose):
  """Keras' transposed convolution, except that on a 1x1 input (the decoder's
  first one) it is computed as the matmul it amounts to: the same weights,
  initialisation and math, with forward and backward passes 4.7x faster on CPU
  than oneDNN's transposed-convolution kernels, but summed in another order, so
  its float32 results differ from Keras' in the last bits (docs/SPEED.md)."""

  def call(self, x):
    if x.shape[1:3] != (1, 1) or self.padding != 'valid' or self.output_padding or self.dilation_rate != (1, 1):
      return super().call(x)
    kernel = self.kernel  # [k, k, filters, channels]: y[h, w, f] = sum_c x[c] kernel[h, w, f, c].
    k, filters, channels = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    y = tf.matmul(tf.reshape(x, [-1, channels]), tf.reshape(tf.transpose(kernel, [3, 0, 1, 2]), [channels, -1]))
    y = tf.reshape(y, [-1, k, k, filters])
    return self.activation(tf.nn.bias_add(y, self.bias))


# How the layers are computed (--layer_impl), the one place for reformulations of
# the same math: 'keras' builds them as the authors' code does, so that an update
# rounds as theirs does (README, Golden reference file); 'fast' swaps in the
# reformulations that run faster on CPU (docs/SPEED.md).
LAYERS = dict(
    keras=dict(conv_transpose=keras.layers.Conv2DTranspose),
    fast=dict(conv_transpose=Conv2DTranspose),
)


class ConvDecoder(Module):
  """Features -> Normal(mean image, 1) over 64x64x3 pixels (ALGORITHM 2.3)."""

  def __init__(self, depth=32, act='relu', shape=(64, 64, 3), layers='keras'):
    super().__init__()
    self._depth = depth
    self._act = act
    self._shape = shape
    self._conv_transpose = LAYERS[layers]['conv_transpose']

  def __call__(self, features):
    x = self.get('h1', keras.layers.Dense, 32 * self._depth)(features)
    x = tf.reshape(x, [-1, 1, 1, 32 * self._depth])
    layers = ((4, 5, self._act), (2, 5, self._act), (1, 6, self._act))
    for i, (mult, kernel, act) in enumerate(layers):
      x = self.get(f'h{i + 2}', self._conv_transpose, mult * self._depth, kernel, 2, activation=act)(x)
    x = self.get('h5', self._conv_transpose, self._shape[-1], 6, 2)(x)
    mean = tf.reshape(as_float32(x), tf.concat([tf.shape(features)[:-1], self._shape], 0))
    return distributions.UnitNormal(mean, len(self._shape))


class DenseHead(Module):
  """MLP -> Normal(mean, 1), Normal(mean, std) with a learned std (the contrastive
  state model, ALGORITHM 3.3) or Bernoulli(logits) over `shape` (ALGORITHM 2.4). The learned
  std is softplus(x) + min_std, or with `init_std` softplus(x + softplus^-1(init_std))
  + min_std, which starts near init_std + min_std."""

  def __init__(self, shape, layers, units, dist='normal', act='elu', min_std=0.1, init_std=None):
    super().__init__()
    self._shape = tuple(shape)
    self._layers_count = layers
    self._units = units
    self._dist = dist
    self._act = act
    self._min_std = min_std
    self._raw_init_std = 0.0 if init_std is None else np.log(np.expm1(init_std))

  def __call__(self, features):
    x = features
    for i in range(self._layers_count):
      x = self.get(f'h{i}', keras.layers.Dense, self._units, self._act)(x)
    outputs = 2 if self._dist == 'normal_std' else 1
    x = as_float32(self.get('out', keras.layers.Dense, outputs * int(np.prod(self._shape)))(x))
    reshape = lambda y: tf.reshape(y, tf.concat([tf.shape(features)[:-1], self._shape], 0))
    if self._dist == 'normal':
      return tfd.Independent(tfd.Normal(reshape(x), 1), len(self._shape))
    if self._dist == 'normal_std':
      mean, std = tf.split(x, 2, -1)
      std = tf.nn.softplus(std + self._raw_init_std) + self._min_std
      return tfd.Independent(tfd.Normal(reshape(mean), reshape(std)), len(self._shape))
    if self._dist == 'binary':
      return tfd.Independent(tfd.Bernoulli(logits=reshape(x), dtype=tf.float32), len(self._shape))
    raise ValueError(f'Unknown head distribution {self._dist!r}; use normal, normal_std or binary.')


# One-hot actors (--action_dist) and the gradient their samples carry (distributions.OneHotDist).
ONE_HOT_GRADIENTS = dict(onehot='straight', onehot_score='score')


class ActionHead(Module):
  """Actor: tanh-transformed diagonal Normal, or one-hot with a straight-through or
  score-function gradient (ALGORITHM 5.2)."""

  def __init__(self, size, layers=4, units=400, dist='tanh_normal', act='elu',
               min_std=1e-4, init_std=5.0, mean_scale=5.0):
    super().__init__()
    self._size = size
    self._layers_count = layers
    self._units = units
    self._dist = dist
    self._act = act
    self._min_std = min_std
    self._raw_init_std = np.log(np.exp(init_std) - 1)  # softplus^-1(init_std)
    self._mean_scale = mean_scale

  def __call__(self, features):
    x = features
    for i in range(self._layers_count):
      x = self.get(f'h{i}', keras.layers.Dense, self._units, self._act)(x)
    if self._dist == 'tanh_normal':
      x = as_float32(self.get('out', keras.layers.Dense, 2 * self._size)(x))
      mean, std = tf.split(x, 2, -1)
      mean = self._mean_scale * tf.tanh(mean / self._mean_scale)
      std = tf.nn.softplus(std + self._raw_init_std) + self._min_std
      dist = tfd.TransformedDistribution(tfd.Normal(mean, std), distributions.ClippedTanh())
      return distributions.SampleDist(tfd.Independent(dist, 1))
    if self._dist in ONE_HOT_GRADIENTS:
      return distributions.OneHotDist(as_float32(self.get('out', keras.layers.Dense, self._size)(x)), ONE_HOT_GRADIENTS[self._dist])
    raise ValueError(f'Unknown action distribution {self._dist!r}; use tanh_normal, onehot or onehot_score.')
