"""Utilities: episode storage, the training dataset, lambda-returns, distributions,
optimisers, logging and the environment loop."""

import collections
import datetime
import json
import os
import pathlib
import re
import shutil
import time
import uuid
import warnings

import imageio.v3 as iio
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras as keras
from tensorboard.compat.proto import summary_pb2

from runs import count_steps, episode_length  # TF-free, shared with the scripts (SPEC 7).

tfd = tfp.distributions

# Keys every stored episode has (SPEC 7); the dataset serves only these.
EPISODE_KEYS = ('image', 'action', 'reward', 'discount')


# Episodes on disk (SPEC 7).

def save_episode(directory, episode):
  """Write one episode as `<timestamp>-<uuid>-<length>.npz`, atomically: a reader
  never sees a partial file, even if the process dies while writing."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  timestamp = datetime.datetime.now().strftime('%Y%m%dT%H%M%S%f')  # Sorts in save order.
  length = len(episode['reward'])
  filename = directory / f'{timestamp}-{uuid.uuid4().hex}-{length}.npz'
  atomic_write(filename, lambda f: np.savez_compressed(f, **episode))
  return filename


def atomic_write(filename, write):
  """Call write(file) on a temporary file beside `filename`, fsync, rename."""
  filename = pathlib.Path(filename)
  temp = filename.with_name(f'.{filename.name}.tmp')
  with open(temp, 'wb') as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temp, filename)
  fsync(filename.parent)


def fsync(path):
  """Flush a file or folder (its entries) to disk."""
  handle = os.open(path, os.O_RDONLY)
  try:
    os.fsync(handle)
  finally:
    os.close(handle)


def load_episode(filename):
  """Load and check one episode file; raise ValueError saying what is wrong."""
  try:
    with open(filename, 'rb') as f, np.load(f, allow_pickle=False) as data:
      episode = {key: data[key] for key in EPISODE_KEYS if key in data}
  except Exception as e:
    raise ValueError(f'cannot be read ({type(e).__name__}: {e})') from e
  missing = set(EPISODE_KEYS) - set(episode)
  if missing:
    raise ValueError(f'misses keys {sorted(missing)}')
  length = episode_length(filename)
  lengths = {key: len(value) for key, value in episode.items()}
  if set(lengths.values()) != {length}:
    raise ValueError(f'has lengths {lengths}, the name says {length}')
  if episode['image'].dtype != np.uint8 or episode['image'].ndim != 4:
    raise ValueError(f'has image {episode["image"].dtype}{episode["image"].shape}')
  return episode


class Episodes:
  """The episodes of a folder held in RAM: new files are loaded on `update()`,
  unreadable ones are skipped with one warning, and at most `limit` transitions
  (agent steps) are kept (oldest dropped from RAM, never from disk). limit 0 means
  no bound."""

  def __init__(self, directory, limit=0):
    self.directory = pathlib.Path(directory)
    self.episodes = collections.OrderedDict()
    self._limit = limit
    self._seen = set()

  def update(self):
    for filename in sorted(self.directory.glob('*.npz')):
      if filename in self._seen:
        continue
      self._seen.add(filename)
      try:
        self.episodes[filename] = load_episode(filename)
      except ValueError as e:
        warnings.warn(f'Skipping episode {filename}: it {e}.')
    while self._limit and self.steps() > self._limit:
      self.episodes.popitem(last=False)

  def steps(self):
    return sum(len(episode['reward']) - 1 for episode in self.episodes.values())

  def sample(self, rng, length, balance=False):
    """A window of `length` consecutive rows from a uniformly chosen episode."""
    episodes = [e for e in self.episodes.values() if len(e['reward']) >= length]
    if not episodes:
      raise ValueError(
          f'No episode in {self.directory} has batch_length={length} rows; '
          'lower --batch_length or raise --time_limit.')
    episode = episodes[rng.integers(len(episodes))]
    total = len(episode['reward'])
    if balance:  # Biased towards the ends of episodes.
      start = min(rng.integers(total), total - length)
    else:
      start = rng.integers(total - length + 1)
    return {key: value[start: start + length] for key, value in episode.items()}


def make_dataset(episodes, batch_size, batch_length, balance=False, seed=0,
                 rescan_every=100):
  """Batches of [batch_size, batch_length] windows from `Episodes`, rescanning
  its folder for new files every `rescan_every` windows (SPEC 7)."""
  episodes.update()
  example = episodes.sample(np.random.default_rng(seed), batch_length)
  signature = {
      key: tf.TensorSpec((batch_length,) + value.shape[1:], value.dtype)
      for key, value in example.items()}

  def generator():
    rng = np.random.default_rng(seed)
    while True:
      for _ in range(rescan_every):
        yield episodes.sample(rng, batch_length, balance)
      episodes.update()

  dataset = tf.data.Dataset.from_generator(generator, output_signature=signature)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  return dataset.prefetch(tf.data.AUTOTUNE)


class Checkpoints:
  """Numbered `tf.train.Checkpoint`s in `<directory>/ckpt-<n>/`. Each is written to a
  temporary folder, fsynced and renamed into place, so a kill never leaves a partial
  one; the newest `keep` are kept, and restoring falls back past unreadable ones."""

  def __init__(self, directory, checkpoint, keep):
    self.directory = pathlib.Path(directory)
    self._checkpoint = checkpoint
    self._keep = keep

  def _numbered(self):
    """{number: folder} of the checkpoint folders."""
    folders = {}
    for folder in self.directory.glob('ckpt-*'):
      match = re.fullmatch(r'ckpt-(\d+)', folder.name)
      if match and folder.is_dir():
        folders[int(match.group(1))] = folder
    return folders

  def saved(self):
    """The checkpoint folders, oldest first."""
    return [folder for _, folder in sorted(self._numbered().items())]

  def save(self):
    saved = self.saved()
    number = max(self._numbered(), default=0) + 1
    temp = self.directory / f'.tmp-ckpt-{number}'
    shutil.rmtree(temp, ignore_errors=True)
    self._checkpoint.write(str(temp / 'ckpt'))
    for filename in temp.iterdir():
      fsync(filename)
    fsync(temp)
    folder = self.directory / f'ckpt-{number}'
    os.rename(temp, folder)
    fsync(self.directory)
    for old in (saved + [folder])[:-self._keep]:
      shutil.rmtree(old)
    return folder

  def restore(self):
    """Restore the newest readable checkpoint; return its folder or None."""
    for folder in reversed(self.saved()):
      try:
        self._checkpoint.read(str(folder / 'ckpt')).assert_existing_objects_matched()
        return folder
      except Exception as e:  # Any unreadable checkpoint: try the previous one.
        warnings.warn(f'Checkpoint {folder} cannot be restored ({type(e).__name__}); using the one before it.')
    return None


# Behaviour learning math (SPEC 4).

def lambda_return(reward, value, pcont, bootstrap, lambda_):
  """Lambda-returns over time-major inputs [T, ...] (paper eq. 6):
  R_t = r_t + c_t ((1 - lambda) v_{t+1} + lambda R_{t+1}), with R_T = v_T = bootstrap."""
  next_value = tf.concat([value[1:], bootstrap[None]], 0)
  inputs = reward + pcont * next_value * (1 - lambda_)
  return tf.scan(
      lambda agg, cur: cur[0] + cur[1] * lambda_ * agg,
      (inputs, pcont), bootstrap, reverse=True)


# Distributions (SPEC 5).

class ClippedTanh(tfp.bijectors.Tanh):
  """tanh whose inverse clips |y| below 1 so saturated samples keep a finite
  log-prob (SPEC 5). The largest float32 below 1 is 1 - 6e-8."""

  def _inverse(self, y):
    bound = np.nextafter(np.float32(1), np.float32(0))
    return tf.atanh(tf.clip_by_value(y, -bound, bound))


class SampleDist:
  """Mode, mean and entropy of a distribution without closed forms, estimated
  from `samples` reparameterized samples (SPEC 5)."""

  def __init__(self, dist, samples=100):
    self._dist = dist
    self._samples = samples

  def __getattr__(self, name):
    return getattr(self._dist, name)

  def sample(self, sample_shape=(), seed=None, noise=None):
    """A reparameterized sample. `noise`, standard-normal draws of the batch and
    event shape, replaces the sampler's own: for the tanh-Normal it is
    tanh(mean + std * noise) (SPEC 5)."""
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
  (SPEC 3). log_prob has TFP's values and gradients, but its backward pass keeps
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
  """One-hot categorical whose samples carry a straight-through gradient (SPEC 5)."""

  def __init__(self, logits):
    super().__init__(logits=logits, dtype=tf.float32)

  def mode(self):
    return tf.one_hot(tf.argmax(self.logits_parameter(), -1), self.event_shape[-1])

  def sample(self, sample_shape=(), seed=None, noise=None):
    if noise is not None:
      raise ValueError('Given sampling noise applies to the tanh_normal actor only; the one-hot actor draws its own.')
    sample = super().sample(sample_shape, seed)
    probs = self.probs_parameter()
    return sample + probs - tf.stop_gradient(probs)


# Optimisation (SPEC 6).

class Optimizer(tf.Module):
  """Adam with global-norm clipping and optional decoupled weight decay (AdamW) on
  the variables whose names match `wd_pattern` (SPEC 6). Works in a tf.distribute
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


# Logging.

class Logger:
  """Scalars to TensorBoard, `metrics.jsonl` and the console; GIFs to TensorBoard
  and `videos/`. Values are averaged between writes."""

  def __init__(self, logdir, step):
    self._logdir = pathlib.Path(logdir)
    self._writer = tf.summary.create_file_writer(str(self._logdir))
    self._scalars = collections.defaultdict(list)
    self._videos = {}
    self._last = (time.time(), step)
    self.step = step

  def scalar(self, name, value, mean=True):
    """Record a value; with mean=False the latest value wins over the average."""
    if not mean:
      self._scalars[name].clear()
    self._scalars[name].append(float(value))

  def video(self, name, frames):
    """frames: uint8 [T, H, W, C]."""
    self._videos[name] = np.asarray(frames)

  def write(self):
    metrics = {name: float(np.mean(values)) for name, values in self._scalars.items()}
    now = time.time()
    if self.step > self._last[1]:
      metrics['fps'] = (self.step - self._last[1]) / (now - self._last[0])
    self._last = (now, self.step)
    print(f'[{self.step}]', ' / '.join(f'{k} {v:.3g}' for k, v in metrics.items()))
    with open(self._logdir / 'metrics.jsonl', 'a') as f:
      f.write(json.dumps({'step': self.step, **metrics}) + '\n')
    with self._writer.as_default():
      for name, value in metrics.items():
        tf.summary.scalar(name, value, self.step)
      for name, frames in self._videos.items():
        self._write_gif(name, frames)
    self._writer.flush()
    self._scalars.clear()
    self._videos.clear()

  def _write_gif(self, name, frames):
    folder = self._logdir / 'videos'
    folder.mkdir(exist_ok=True)
    data = iio.imwrite('<bytes>', frames, extension='.gif', duration=40, loop=0)
    (folder / f'{name.replace("/", "_")}_{self.step}.gif').write_bytes(data)
    # TensorBoard shows an animated GIF stored as an encoded image summary.
    image = summary_pb2.Summary.Image(
        height=frames.shape[1], width=frames.shape[2], colorspace=frames.shape[3],
        encoded_image_string=data)
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=name, image=image)])
    tf.summary.experimental.write_raw_pb(summary.SerializeToString(), self.step)
