"""Runs in their logdirs, without TensorFlow: scripts such as the sweep import it."""

import atexit
import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import socket
import time


# Logdir lock: one writer per logdir (README, Robustness).

LOCK_FILE = 'run.lock'
HOLDER_KEYS = ('host', 'pid', 'since')
_HELD = {}  # Lock file path -> open file descriptor, for the locks this process holds.


class LogdirInUse(Exception):
  """A live process holds the logdir's lock."""


def lock_logdir(logdir, patience=1.0):
  """Hold `<logdir>/run.lock` until this process ends and record the holder in it.

  The lock is an flock, which the kernel drops when its process dies however it
  dies, so a free lock file that still holds a record was left by a dead process:
  that record is returned (to warn about) and replaced; otherwise None. Raises
  LogdirInUse naming the holder when a live one has it. Tries for `patience`
  seconds, so a reader's brief probe (`lock_holder`) does not stop a start. A
  process calling again for a logdir it holds gets None.
  """
  path = (pathlib.Path(logdir) / LOCK_FILE).resolve()
  if path in _HELD:
    return None
  # Read-write (an exclusive lock over NFS needs it), and never truncated here: a
  # live holder's record stays readable.
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    if not _try_lock(fd, fcntl.LOCK_EX, patience):
      raise LogdirInUse(
          f'{logdir} is in use by {describe(_read_holder(fd))}; wait for it to end, '
          'stop it, or use another --logdir.')
    stale = _read_holder(fd)
    holder = dict(host=socket.gethostname(), pid=os.getpid(),
                  since=datetime.datetime.now().astimezone().isoformat(timespec='seconds'))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    os.fsync(fd)
  except BaseException:
    os.close(fd)
    raise
  _HELD[path] = fd
  return stale if stale['pid'] is not None else None


def lock_holder(logdir):
  """The holder {"host", "pid", "since"} of the process that holds the logdir's
  lock, or None when no live process does (a record left by a dead one does not
  count). Its values are None while the holder has not written its record yet."""
  try:
    fd = os.open(pathlib.Path(logdir) / LOCK_FILE, os.O_RDONLY)
  except FileNotFoundError:
    return None
  try:
    if _try_lock(fd, fcntl.LOCK_SH, 0):
      return None  # Free; closing the file releases the probe.
    return _read_holder(fd)
  finally:
    os.close(fd)


def describe(holder):
  if holder['pid'] is None:
    return 'a process that has not recorded itself yet'
  return f'process {holder["pid"]} on host {holder["host"]} (since {holder["since"]})'


def _try_lock(fd, kind, patience):
  deadline = time.monotonic() + patience
  while True:
    try:
      fcntl.flock(fd, kind | fcntl.LOCK_NB)
      return True
    except BlockingIOError:
      if time.monotonic() >= deadline:
        return False
      time.sleep(0.05)


def _read_holder(fd):
  """The holder recorded in the lock file; its values are None without a record."""
  try:
    holder = json.loads(os.pread(fd, 4096, 0))
  except ValueError:  # Empty, or not a record of ours.
    holder = None
  if not isinstance(holder, dict):
    holder = {}
  return {key: holder.get(key) for key in HOLDER_KEYS}


@atexit.register
def _clear_records():
  """On a normal exit (sys.exit and errors included) empty the lock files, so that
  only a process that died leaves a record behind."""
  for fd in _HELD.values():
    with contextlib.suppress(OSError):
      os.ftruncate(fd, 0)
