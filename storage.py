"""What a run keeps on disk, written so that a kill at any moment loses nothing:
episode files (ALGORITHM 7.1), numbered checkpoints, and the crash-safe writes both
use (and the logger's metrics and videos)."""

import contextlib
import datetime
import os
import pathlib
import re
import shutil
import sys
import uuid

import numpy as np
import tensorflow as tf

from runs import episode_length  # TF-free, shared with the scripts (ALGORITHM 7).

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
