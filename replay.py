"""The replay: every stored episode held in RAM, compressed, and the tf.data
pipeline of training windows drawn from it (ALGORITHM 7.2)."""

import concurrent.futures
import pathlib
import sys

import numpy as np
import tensorflow as tf
import zstandard

from storage import load_episode


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
  `update()`, unreadable ones skipped with one line `Warning: skipping episode ...` on stderr."""

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
        print(f'Warning: skipping episode {filename}: it {e}.', file=sys.stderr)

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
