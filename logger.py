"""Logging: scalars to TensorBoard and metrics.jsonl, GIFs, the console's progress line."""

import collections
import json
import os
import pathlib
import time

import imageio.v3 as iio
import numpy as np
import tensorflow as tf

from storage import atomic_write, writing


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
