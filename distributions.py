"""The distributions of the actor and the decoder (ALGORITHM 5), on top of TFP."""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions


class ClippedTanh(tfp.bijectors.Tanh):
  """tanh whose inverse clips |y| below 1 so saturated samples keep a finite
  log-prob (ALGORITHM 5.1). The largest float32 below 1 is 1 - 6e-8."""

  def _inverse(self, y):
    bound = np.nextafter(np.float32(1), np.float32(0))
    return tf.atanh(tf.clip_by_value(y, -bound, bound))


class SampleDist:
  """Mode, mean and entropy of a distribution without closed forms, estimated
  from `samples` reparameterized samples (ALGORITHM 5.1)."""

  def __init__(self, dist, samples=100):
    self._dist = dist
    self._samples = samples

  def __getattr__(self, name):
    return getattr(self._dist, name)

  def sample(self, sample_shape=(), seed=None, noise=None):
    """A reparameterized sample. `noise`, standard-normal draws of the batch and
    event shape, replaces the sampler's own: for the tanh-Normal it is
    tanh(mean + std * noise) (ALGORITHM 5.1)."""
    if noise is None:
      return self._dist.sample(sample_shape, seed)
    transformed = self._dist.distribution  # Independent(TransformedDistribution(Normal)).
    normal = transformed.distribution
    return transformed.bijector.forward(normal.loc + normal.scale * noise)

  def mean(self):
    return tf.reduce_mean(self._dist.sample(self._samples), 0)

  def mode(self):
    """The most likely of the samples (event rank 1)."""
    sample = self._dist.sample(self._samples)
    best = tf.one_hot(tf.argmax(self._dist.log_prob(sample), 0), self._samples, axis=0)
    return tf.reduce_sum(best[..., None] * sample, 0)

  def entropy(self):
    sample = self._dist.sample(self._samples)
    return -tf.reduce_mean(self._dist.log_prob(sample), 0)


class UnitNormal(tfd.Independent):
  """Normal(loc, 1) over the last `ndims` axes: the decoder's image distribution
  (ALGORITHM 2.3). log_prob has TFP's values and gradients, but its backward pass keeps
  one loc-sized tensor where TFP's keeps four (0.3 GB of a 50x50 image batch)."""

  def __init__(self, loc, ndims):
    parameters = dict(locals())
    super().__init__(tfd.Normal(loc, 1.0), ndims)
    self._parameters = parameters
    self._ndims = ndims

  def _log_prob(self, x):
    axes = list(range(-self._ndims, 0))
    size = tf.cast(tf.reduce_prod(tf.shape(x)[-self._ndims:]), x.dtype)

    @tf.custom_gradient
    def log_prob(x, loc):
      diff = x - loc
      def grad(upstream):  # d/dloc of -0.5 (x - loc)^2 is (x - loc), d/dx its negative.
        g = diff * tf.reshape(upstream, tf.concat([tf.shape(upstream), tf.ones_like(axes)], 0))
        return -g, g
      return -0.5 * tf.reduce_sum(tf.square(diff), axes) - 0.5 * np.log(2 * np.pi) * size, grad

    return log_prob(x, self.distribution.loc)


class OneHotDist(tfd.OneHotCategorical):
  """One-hot categorical whose samples carry a gradient for the logits (ALGORITHM 5.2).
  'straight': straight-through, sample + probs - stop_gradient(probs), as the paper
  (section 3) and the authors' TF2 code describe it; 'score': the score function,
  sample * exp(log p(sample) - stop_gradient(log p(sample))), so that d f(sample) =
  (df/dsample . sample) d log p(sample), the default of the authors' TF1 code for
  discrete actions (scripts/configs.py, discrete; distributions/one_hot.py)."""

  def __init__(self, logits, gradient='straight'):
    super().__init__(logits=logits, dtype=tf.float32)
    if gradient not in ('straight', 'score'):
      raise ValueError(f'Unknown one-hot gradient {gradient!r}; use straight or score.')
    self._gradient = gradient

  def mode(self):
    return tf.one_hot(tf.argmax(self.logits_parameter(), -1), self.event_shape[-1])

  def sample(self, sample_shape=(), seed=None, noise=None):
    if noise is not None:
      raise ValueError('Given sampling noise applies to the tanh_normal actor only; the one-hot actor draws its own.')
    sample = super().sample(sample_shape, seed)
    if self._gradient == 'score':
      log_prob = self.log_prob(sample)[..., None]
      return sample * tf.exp(log_prob - tf.stop_gradient(log_prob))
    probs = self.probs_parameter()
    return sample + probs - tf.stop_gradient(probs)
