"""The update's math: input scaling, lambda-returns, the CEM planner, the
contrastive bound and the optimiser."""

import re

import numpy as np
import tensorflow as tf
import tf_keras as keras


def image_to_float(image):
  """uint8 images as float32 in [-0.5, 0.5]: image / 255 - 0.5, with the division
  rounded as IEEE division rounds it, traced or not. Grappler rewrites a traced
  `x / 255.0` into `x * (1 / 255)`, which puts 111 of the 256 pixel values one float32
  step away from the division the authors' TF2 code computes in its tf.data map
  (dreamer.py, preprocess); it leaves DivNoNan alone (tests/test_tools.py pins both)."""
  return tf.math.divide_no_nan(tf.cast(image, tf.float32), 255.0) - 0.5


# Behavior learning math (ALGORITHM 4).

def lambda_return(reward, value, pcont, bootstrap, lambda_):
  """Lambda-returns over time-major inputs [T, ...] (paper eq. 6):
  R_t = r_t + c_t ((1 - lambda) v_{t+1} + lambda R_{t+1}), with R_T = v_T = bootstrap."""
  next_value = tf.concat([value[1:], bootstrap[None]], 0)
  inputs = reward + pcont * next_value * (1 - lambda_)
  return tf.scan(
      lambda agg, cur: cur[0] + cur[1] * lambda_ * agg,
      (inputs, pcont), bootstrap, reverse=True)


def cem(objective, shape, iterations, candidates, top):
  """Cross-entropy method, as PlaNet plans: a diagonal Normal over action sequences
  of `shape` [B, H, A], starting at mean 0 and std 1, refit `iterations` times to the
  `top` of its `candidates` samples (clipped to [-1, 1]) by `objective`, which maps
  samples [B, N, H, A] to scores [B, N]. Returns the final mean [B, H, A]."""
  batch, rest = shape[0], list(shape[1:])

  def refit(mean, std):
    noise = tf.random.normal(tf.stack([batch, candidates, *rest]))
    sample = tf.clip_by_value(mean[:, None] + std[:, None] * noise, -1, 1)
    _, best = tf.math.top_k(objective(sample), top)
    elite = tf.gather(sample, best, batch_dims=1)  # [B, top, H, A].
    keep = lambda x: tf.ensure_shape(x, mean.shape)  # The loop keeps static shapes.
    return keep(tf.reduce_mean(elite, 1)), keep(tf.math.reduce_std(elite, 1))

  start = (tf.zeros(tf.stack(shape)), tf.ones(tf.stack(shape)))
  # One iteration after another, so each draws its noise in turn (models.sequential_scan).
  mean, _ = tf.while_loop(lambda mean, std: True, refit, start, maximum_iterations=iterations, parallel_iterations=1)
  return mean


# Representation learning math (ALGORITHM 3).

def log_density_matrix(z, mean, std):
  """[N, N] log-densities log q(z_i | o_j) at [i, j] of states z [N, D] under the
  diagonal Normals q(. | o_j) = Normal(mean_j, std_j), as float32. They come from
  matmuls of the expanded square, so no [N, N, D] tensor is formed (0.75 GB for the
  paper's 2500 states), computed in float64: the squared distance of a state to its
  own observation's mean is a small difference of terms up to 1e6 when the stds are
  small (0.01 at the TF1 state model's floor), which float32 would round by 0.1."""
  dtype = z.dtype
  z, mean, std = (tf.cast(x, tf.float64) for x in (z, mean, std))
  precision = 1 / tf.square(std)
  # sum_d (z_id - m_jd)^2 / s_jd^2 = z_i^2 . p_j - 2 z_i . (m_j p_j) + m_j^2 . p_j.
  square = (tf.matmul(tf.square(z), precision, transpose_b=True)
            - 2 * tf.matmul(z, mean * precision, transpose_b=True)
            + tf.reduce_sum(tf.square(mean) * precision, -1)[None])
  norm = tf.reduce_sum(tf.math.log(std), -1)[None] + 0.5 * z.shape[-1] * np.log(2 * np.pi)
  return tf.cast(-0.5 * square - norm, dtype)


def info_nce(log_q):
  """The InfoNCE term of each state i as the paper's eq. 12 writes it, normalised
  over the observations of the batch: log q(z_i | o_i) - log sum_j q(z_i | o_j), from
  log_q [N, N] of `log_density_matrix`."""
  return tf.linalg.diag_part(log_q) - tf.reduce_logsumexp(log_q, 1)


def info_nce_window(log_q, batch, length, sequences=10, shifts=30):
  """The InfoNCE term of each observation n = (b, t) of a [batch, length] batch as the
  authors' TF1 code computes it (training/utility.py, compute_cpc_loss, 'window'):
  normalised over states for that observation, log q(z_n | o_n) - log sum_k q(z_k | o_n),
  where k runs over the window of states (b - i mod batch, t - j mod length) for i in
  [-sequences // 2, sequences - sequences // 2) and j likewise with `shifts`, the pair
  (0, 0) included. The window shrinks to the batch where the batch is smaller."""
  sequences, shifts = min(sequences, batch), min(shifts, length)
  b, t = np.meshgrid(np.arange(batch), np.arange(length), indexing='ij')
  i, j = np.meshgrid(np.arange(sequences) - sequences // 2, np.arange(shifts) - shifts // 2, indexing='ij')
  states = ((b.reshape(-1, 1) - i.reshape(1, -1)) % batch) * length + (t.reshape(-1, 1) - j.reshape(1, -1)) % length
  window = tf.gather(tf.transpose(log_q), states, batch_dims=1)  # [N, sequences x shifts]: log q(z_k | o_n).
  return tf.linalg.diag_part(log_q) - tf.reduce_logsumexp(window, 1)


# Optimisation (ALGORITHM 6).

class Optimizer(tf.Module):
  """Adam with global-norm clipping and optional decoupled weight decay (AdamW) on
  the variables whose names match `wd_pattern` (ALGORITHM 6). Works in a tf.distribute
  replica context: gradients are summed across replicas before clipping, so they
  equal the single-device ones. With `loss_scaling` (float16) a Keras
  LossScaleOptimizer scales the loss and skips non-finite steps itself."""

  def __init__(self, name, lr, eps=1e-7, clip=100.0, wd=0.0, wd_pattern=r'.*', loss_scaling=False):
    super().__init__(name=name)
    if wd:
      self.opt = keras.optimizers.AdamW(lr, weight_decay=wd, epsilon=eps)
    else:
      self.opt = keras.optimizers.Adam(lr, epsilon=eps)
    if loss_scaling:
      self.opt = keras.mixed_precision.LossScaleOptimizer(self.opt)
    self.loss_scaling = loss_scaling
    self._clip = clip
    self._wd_pattern = wd_pattern

  def build(self, variables):
    self.opt.build(variables)
    inner = self.opt.inner_optimizer if self.loss_scaling else self.opt
    if isinstance(inner, keras.optimizers.AdamW):
      inner.exclude_from_weight_decay(var_list=[v for v in variables if not re.search(self._wd_pattern, v.name)])

  def gradients(self, tape, loss, variables):
    """In a replica: (norm before clipping, 1 if not finite else 0, gradients)."""
    context = tf.distribute.get_replica_context()
    with tape:  # Record the scaling too.
      scaled = loss / context.num_replicas_in_sync  # Summed below: the batch mean.
      if self.loss_scaling:
        scaled = self.opt.get_scaled_loss(scaled)
    grads = tape.gradient(scaled, variables)
    if self.loss_scaling:
      grads = self.opt.get_unscaled_gradients(grads)
    grads = context.all_reduce('sum', grads)
    grads, norm = tf.clip_by_global_norm(grads, self._clip)
    finite = tf.math.is_finite(norm) & tf.math.is_finite(context.all_reduce('sum', loss))
    return norm, 1.0 - tf.cast(finite, tf.float32), grads

  def apply(self, grads, variables):
    """In a replica: apply gradients that are already summed across replicas."""
    self.opt.apply_gradients(zip(grads, variables), skip_gradients_aggregation=True)

  def loss_scale(self):
    return tf.cast(self.opt.loss_scale, tf.float32)
