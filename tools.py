"""Utilities: episode storage, the training dataset, lambda-returns, distributions,
optimisers, logging and the environment loop."""

import collections
import concurrent.futures
import contextlib
import datetime
import json
import os
import pathlib
import re
import shutil
import sys
import time
import uuid
import warnings

import imageio.v3 as iio
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras as keras
import zstandard

from runs import count_steps, episode_length  # TF-free, shared with the scripts (ALGORITHM 7).

tfd = tfp.distributions

# Keys every stored episode has (ALGORITHM 7.1); the dataset serves only these.
EPISODE_KEYS = ('image', 'action', 'reward', 'discount')


# Episodes on disk (ALGORITHM 7).

def save_episode(directory, episode):
  """Write one episode as `<timestamp>-<uuid>-<length>.npz`, atomically: a reader
  never sees a partial file, even if the process dies while writing."""
  directory = pathlib.Path(directory)
  timestamp = datetime.datetime.now().strftime('%Y%m%dT%H%M%S%f')  # Sorts in save order.
  length = len(episode['reward'])
  filename = directory / f'{timestamp}-{uuid.uuid4().hex}-{length}.npz'
  atomic_write(filename, lambda f: np.savez_compressed(f, **episode))
  return filename


def atomic_write(filename, write):
  """Call write(file) on a temporary file beside `filename` (creating its folder),
  fsync, rename. If that fails the temporary file is removed and a WriteError raised."""
  filename = pathlib.Path(filename)
  temp = filename.with_name(f'.{filename.name}.tmp')
  with writing(filename):
    filename.parent.mkdir(parents=True, exist_ok=True)
    try:
      with open(temp, 'wb') as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
      os.replace(temp, filename)
    except BaseException:
      temp.unlink(missing_ok=True)
      raise
    fsync(filename.parent)


class WriteError(Exception):
  """A write into the logdir failed (disk full, quota, I/O error); the message
  names the path, the error and what to do."""


@contextlib.contextmanager
def writing(path):
  """Turn an OS or TensorFlow error raised inside into a WriteError naming `path`.
  TensorFlow's writers raise OpErrors (ResourceExhaustedError for a full disk)."""
  try:
    yield
  except (OSError, tf.errors.OpError) as e:
    raise WriteError(
        f'Cannot write {path}: {os_reason(e)}. Free space (or fix the cause) and rerun '
        'the same command to resume.') from e


def os_reason(error):
  """The system's words for an error: strerror, or for TensorFlow the end of the
  first message line ('<file>; No space left on device [Op:SaveV2]')."""
  if isinstance(error, OSError):
    return error.strerror or str(error)
  line = re.sub(r'\{\{.*?\}\}|\[Op:\w+\]', '', error.message.partition('\n')[0])
  return line.rpartition('; ')[2].strip() or type(error).__name__


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


# Frames per compressed chunk and the zstd level of the in-RAM replay (docs/SPEED.md,
# Memory): walker frames compress 4.1x in chunks of 25 at level 9, as with zlib
# level 6 at the same compression speed, and decompress 4-6x faster than zlib.
CHUNK, LEVEL = 25, 9


class StoredEpisode:
  """One episode in RAM: images zstd-compressed in chunks of `chunk` frames, so
  a window decompresses only the chunks it touches; the other keys as arrays."""

  def __init__(self, episode, chunk=CHUNK):
    image = episode['image']
    self.length = len(image)
    self._chunk = chunk
    self._frame = image.shape[1:]
    image = np.ascontiguousarray(image)  # Chunks compressed from views, without copies.
    # zstandard returns bytes that keep the allocation of the worst-case size (about
    # the raw size); a copy holds just the compressed bytes.
    self._chunks = [
        bytes(memoryview(zstandard.compress(image[i: i + chunk], LEVEL))) for i in range(0, len(image), chunk)]
    self._arrays = {key: value for key, value in episode.items() if key != 'image'}

  def nbytes(self):
    """Bytes held: the compressed chunks and the other arrays."""
    return sum(map(len, self._chunks)) + sum(value.nbytes for value in self._arrays.values())

  def window(self, start, length):
    """Rows start to start + length of every key."""
    first, last = start // self._chunk, (start + length - 1) // self._chunk
    frames = b''.join(zstandard.decompress(chunk) for chunk in self._chunks[first: last + 1])
    image = np.frombuffer(frames, np.uint8).reshape((-1,) + self._frame)
    offset = start - first * self._chunk
    window = {key: value[start: start + length] for key, value in self._arrays.items()}
    window['image'] = image[offset: offset + length]
    return window


class Episodes:
  """Every episode of a folder held in RAM as a `StoredEpisode` (none is ever
  dropped: the paper samples from all of them). New files are loaded on
  `update()`, unreadable ones skipped with one warning."""

  def __init__(self, directory, chunk=CHUNK):
    self.directory = pathlib.Path(directory)
    self.episodes = {}
    self._chunk = chunk
    self._seen = set()
    self._eligible = {}  # Episodes with at least `length` rows, by length.

  def update(self):
    new = [f for f in sorted(self.directory.glob('*.npz')) if f not in self._seen]
    self._seen.update(new)
    with concurrent.futures.ThreadPoolExecutor() as pool:  # zstd releases the GIL.
      futures = [pool.submit(self._load, filename) for filename in new]
    for filename, future in zip(new, futures):
      try:
        self.add(filename, future.result())
      except ValueError as e:
        warnings.warn(f'Skipping episode {filename}: it {e}.')

  def _load(self, filename):
    return StoredEpisode(load_episode(filename), self._chunk)

  def add(self, name, episode):
    """Hold a `StoredEpisode` under `name`."""
    self.episodes[name] = episode
    self._eligible.clear()

  def nbytes(self):
    return sum(episode.nbytes() for episode in self.episodes.values())

  def choose(self, rng, length, balance=False):
    """(name, start) of a window of `length` rows: a uniformly chosen episode
    among those long enough, a uniform start (ALGORITHM 7.2)."""
    if length not in self._eligible:
      self._eligible[length] = [name for name, e in self.episodes.items() if e.length >= length]
    names = self._eligible[length]
    if not names:
      raise ValueError(
          f'No episode in {self.directory} has batch_length={length} rows; '
          'lower --batch_length or raise --time_limit.')
    name = names[rng.integers(len(names))]
    total = self.episodes[name].length
    if balance:  # Biased towards the ends of episodes.
      start = min(rng.integers(total), total - length)
    else:
      start = rng.integers(total - length + 1)
    return name, start

  def window(self, name, start, length):
    return self.episodes[name].window(start, length)

  def sample(self, rng, length, balance=False):
    return self.window(*self.choose(rng, length, balance), length)


def make_dataset(episodes, batch_size, batch_length, balance=False, seed=0,
                 rescan_every=100, read_ahead=True):
  """Batches of [batch_size, batch_length] windows from `Episodes` (ALGORITHM 7.2). One
  generator chooses the windows in order, rescanning the folder for new files
  every `rescan_every` windows; parallel tf.data calls decompress them. With
  `read_ahead` False (--deterministic) no window is chosen before its batch is
  asked for, so which episodes a rescan sees depends on the run alone, not on
  how far a background thread got while the environments were stepping."""
  episodes.update()
  example = episodes.sample(np.random.default_rng(seed), batch_length)
  keys = sorted(example)
  specs = [tf.TensorSpec((batch_length,) + example[k].shape[1:], example[k].dtype) for k in keys]

  def choices():
    rng = np.random.default_rng(seed)
    while True:
      for _ in range(rescan_every):
        name, start = episodes.choose(rng, batch_length, balance)
        yield str(name), start
      episodes.update()

  def window(name, start):
    window = episodes.window(pathlib.Path(name.decode()), start, batch_length)
    return [window[key] for key in keys]

  def load(name, start):
    values = tf.numpy_function(window, [name, start], [spec.dtype for spec in specs])
    return {key: tf.ensure_shape(value, spec.shape) for key, value, spec in zip(keys, values, specs)}

  signature = (tf.TensorSpec((), tf.string), tf.TensorSpec((), tf.int64))
  dataset = tf.data.Dataset.from_generator(choices, output_signature=signature)
  dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE if read_ahead else None)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  if read_ahead:
    return dataset.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()  # Without the rewrites that read ahead.
  options.experimental_optimization.inject_prefetch = False
  options.experimental_optimization.map_and_batch_fusion = False
  return dataset.with_options(options)


class Checkpoints:
  """Numbered `tf.train.Checkpoint`s of `objects` (a dict of trackables) in
  `<directory>/ckpt-<n>/`. Each is written to a temporary folder, fsynced and renamed
  into place, so a kill never leaves a partial one; the newest `keep` are kept, and
  restoring falls back past unreadable ones. Objects named in `optional` may be
  missing from a checkpoint (one written before they existed) and then keep their
  values."""

  def __init__(self, directory, objects, keep, optional=()):
    self.directory = pathlib.Path(directory)
    self._objects = objects
    self._keep = keep
    self._optional = set(optional)

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
    """Write the next checkpoint, or remove its temporary folder and raise a
    WriteError; temporary folders of killed runs are removed first."""
    saved = self.saved()
    number = max(self._numbered(), default=0) + 1
    for leftover in self.directory.glob('.tmp-ckpt-*'):
      shutil.rmtree(leftover, ignore_errors=True)
    temp = self.directory / f'.tmp-ckpt-{number}'
    folder = self.directory / f'ckpt-{number}'
    with writing(temp):
      try:
        tf.train.Checkpoint(**self._objects).write(str(temp / 'ckpt'))
        for filename in temp.iterdir():
          fsync(filename)
        fsync(temp)
        os.rename(temp, folder)
      except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
      fsync(self.directory)
    for old in (saved + [folder])[:-self._keep]:
      shutil.rmtree(old)
    return folder

  def restore(self):
    """Restore the newest readable checkpoint; return its folder or None."""
    for folder in reversed(self.saved()):
      path = str(folder / 'ckpt')
      try:
        present = {name.split('/')[0] for name, _ in tf.train.list_variables(path)}
        objects = {k: v for k, v in self._objects.items() if k in present or k not in self._optional}
        tf.train.Checkpoint(**objects).read(path).assert_existing_objects_matched()
        return folder
      except Exception as e:  # Any unreadable checkpoint: try the previous one.
        print(f'Warning: checkpoint {folder} cannot be restored ({type(e).__name__}); using the one before it.', file=sys.stderr)
    return None


# Inputs.

def image_to_float(image):
  """uint8 images as float32 in [-0.5, 0.5]: image / 255 - 0.5, with the division
  rounded as IEEE division rounds it, traced or not. Grappler rewrites a traced
  `x / 255.0` into `x * (1 / 255)`, which puts 111 of the 256 pixel values one float32
  step away from the division the authors' TF2 code computes in its tf.data map
  (dreamer.py, preprocess); it leaves DivNoNan alone (tests/test_tools.py pins both)."""
  return tf.math.divide_no_nan(tf.cast(image, tf.float32), 255.0) - 0.5


# Behaviour learning math (ALGORITHM 4).

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


# Distributions (ALGORITHM 5).

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


# Logging.

def gif(frames):
  """uint8 frames [T, H, W, C] as an animated GIF at 25 frames per second."""
  return iio.imwrite('<bytes>', frames, extension='.gif', duration=40, loop=0)


def progress(history, budget):
  """Env steps per second over `history`, (seconds, env steps) points oldest
  first, and the seconds left to `budget` env steps at that rate; (None, None)
  while no step has been timed."""
  (start_time, start_step), (time_now, step) = history[0], history[-1]
  if time_now <= start_time or step <= start_step:
    return None, None
  rate = (step - start_step) / (time_now - start_time)
  return rate, max(0, budget - step) / rate


def duration(seconds):
  """Seconds as the two largest units: '2d 03h', '1h 05m', '4m 10s', '12s'."""
  seconds = int(round(seconds))
  units = (('d', 86400), ('h', 3600), ('m', 60), ('s', 1))
  for i, (name, size) in enumerate(units[:-1]):
    if seconds >= size:
      small, small_size = units[i + 1]
      return f'{seconds // size}{name} {seconds % size // small_size:02d}{small}'
  return f'{seconds}s'


class Logger:
  """Scalars to TensorBoard and `metrics.jsonl`, GIFs to `videos/` only (README,
  Output folder), and one console line per write: progress to the budget and the
  `CONSOLE` scalars. Values are averaged between writes."""

  CONSOLE = ('train/return', 'test/return', 'train/model_loss', 'train/actor_loss', 'train/value_loss')
  WINDOW = 5  # The recent speed is measured over the last WINDOW writes.

  def __init__(self, logdir, step, budget):
    self._logdir = pathlib.Path(logdir)
    self._events = f'the TensorBoard events in {self._logdir}'
    with writing(self._events):
      self._writer = tf.summary.create_file_writer(str(self._logdir))
    self._scalars = collections.defaultdict(list)
    self._videos = {}
    self._history = collections.deque([(time.time(), step)], self.WINDOW + 1)
    self._budget = budget
    self.step = step

  def scalar(self, name, value, mean=True):
    """Record a value; with mean=False the latest value wins over the average."""
    if not mean:
      self._scalars[name].clear()
    self._scalars[name].append(float(value))

  def video(self, name, frames):
    """frames: uint8 [T, H, W, C]."""
    self._videos[name] = np.asarray(frames)

  def write(self, updates):
    """Write the scalars recorded since the last write; `updates` is the number
    of gradient updates done so far."""
    metrics = {name: float(np.mean(values)) for name, values in self._scalars.items()}
    self._history.append((time.time(), self.step))
    fps, eta = progress(self._history, self._budget)
    timing = dict(budget=self._budget, updates=updates, fps=fps, eta=eta)
    print(self._console_line(metrics, **timing), flush=True)
    self._append_metrics({'step': self.step, **{k: v for k, v in timing.items() if v is not None}, **metrics})
    with writing(self._events), self._writer.as_default():
      for name, value in metrics.items():
        tf.summary.scalar(name, value, self.step)
      self._writer.flush()
    for name, frames in self._videos.items():
      self._write_gif(name, frames)
    self._scalars.clear()
    self._videos.clear()

  def _console_line(self, metrics, budget, updates, fps, eta):
    speed = 'speed unknown' if fps is None else f'{fps:.1f} env steps/s, ETA {duration(eta)}'
    line = f'[{self.step}/{budget} env steps, {100 * self.step / budget:.1f}%] {updates} updates, {speed}'
    shown = [f'{name} {metrics[name]:.4g}' for name in self.CONSOLE if name in metrics]
    return ' | '.join([line] + shown)

  def _append_metrics(self, row):
    """One line onto metrics.jsonl; a failed write is cut off again, so the file
    never ends in a partial line."""
    filename = self._logdir / 'metrics.jsonl'
    line = memoryview((json.dumps(row) + '\n').encode())
    with writing(filename), open(filename, 'ab', buffering=0) as f:
      size = f.seek(0, os.SEEK_END)
      try:
        while line:  # An unbuffered write may take part of the line.
          line = line[f.write(line):]
      except OSError:
        f.truncate(size)
        raise

  def _write_gif(self, name, frames):
    data = gif(frames)
    atomic_write(self._logdir / 'videos' / f'{name.replace("/", "_")}_{self.step}.gif', lambda f: f.write(data))
