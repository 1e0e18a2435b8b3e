"""Runs in their logdirs, without TensorFlow: step counts, configs, metrics, the
sweep's records, the published reference scores, and the logdir lock. Shared by
dreamer.py and tools.py and by the scripts in `scripts/` (learning check, sweep,
plots, comparison, report)."""

import atexit
import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import re
import socket
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent
REFERENCE = ROOT / 'reference' / 'dreamer_curves.json'
BASELINES = ROOT / 'reference' / 'baselines.json'
PUBLISHED = 'published'  # Method name of the authors' curves beside ours.
MAX_SCORE = 1000.0  # The most a DMC episode of 1000 env steps can return.
STEPS = (1e5, 5e5, 1e6, 5e6)  # Env steps the scripts compare at by default.


# One logdir: episodes, config, metrics (SPEC 7).

def episode_length(filename):
  """Rows of an episode (transitions including the first), read from its name."""
  return int(pathlib.Path(filename).stem.rsplit('-', 1)[-1])


def count_steps(directory, action_repeat):
  """Env steps collected so far: sum of (length - 1) x action_repeat (SPEC 7)."""
  files = pathlib.Path(directory).glob('*.npz')
  return sum((episode_length(f) - 1) * action_repeat for f in files)


def read_config(logdir):
  """The run's config.json as a dict; {} if it is missing or unreadable."""
  try:
    return json.loads((pathlib.Path(logdir) / 'config.json').read_text())
  except (OSError, ValueError):
    return {}


def env_steps(logdir, config=None):
  """Env steps of a run's training episodes, with the action repeat of its config."""
  config = read_config(logdir) if config is None else config
  return count_steps(pathlib.Path(logdir) / 'episodes', config.get('action_repeat', 2))


def read_metrics(logdir, y='test/return', x='step'):
  """Sorted arrays (xs, ys) of the rows of metrics.jsonl that hold both keys; a
  repeated x keeps its last value. Empty arrays if there is no such row."""
  points = {}
  try:
    lines = (pathlib.Path(logdir) / 'metrics.jsonl').read_text().splitlines()
  except OSError:
    lines = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue  # A line cut short by a killed run.
    if x in row and y in row:
      points[float(row[x])] = float(row[y])
  xs = np.array(sorted(points), float)
  return xs, np.array([points[s] for s in xs], float)


def value_at(xs, ys, steps, until=None):
  """One curve linearly interpolated at `steps`. Before its first point the first
  value holds; after its last point the last value holds up to `until`, the env
  steps the run got to (its last logged step), so a run that stopped at its budget
  counts as having reached it; beyond that NaN ("not reached"). Without `until`
  (the published curves) the last value holds for one evaluation interval."""
  xs, ys, steps = np.asarray(xs, float), np.asarray(ys, float), np.asarray(steps, float)
  if not len(xs):
    return np.full(steps.shape, np.nan)
  if until is None:
    until = xs[-1] + (xs[-1] - xs[-2] if len(xs) > 1 else 0.0)
  return np.where(steps <= max(until, xs[-1]), np.interp(steps, xs, ys), np.nan)


# Sets of runs: ours under roots, the published ones from the reference file.
# A run is dict(task, method, seed, logdir, xs, ys), ours also with `until`: the last
# env step they logged.

def parse_source(text):
  """'PATH' or 'METHOD=PATH' -> (method or None, path)."""
  method, sep, path = text.rpartition('=')
  return (method or None) if sep else None, pathlib.Path(path)


def find_runs(sources, y='test/return', x='step'):
  """Every run with a metrics.jsonl under the given sources ('PATH' or
  'METHOD=PATH'). In the layout <root>/<task>/<method>/<seed>/ the folders name
  the method; otherwise METHOD, or the root's folder name. Task and seed come from
  the run's config.json where it has them."""
  runs = []
  for source in sources:
    method, root = parse_source(source)
    for metrics in sorted(root.glob('**/metrics.jsonl')):
      logdir = metrics.parent
      parts = logdir.relative_to(root).parts
      config = read_config(logdir)
      task = config.get('task') or (parts[0] if len(parts) == 3 else None)
      if task is None:
        continue  # Not a Dreamer run: no config and not in the sweep layout.
      xs, ys = read_metrics(logdir, y, x)
      logged, _ = read_metrics(logdir, x, x)  # Every row: how far the run got.
      runs.append(dict(
          task=task, method=method or (parts[1] if len(parts) == 3 else root.resolve().name),
          seed=str(config.get('seed', logdir.name)), logdir=logdir, xs=xs, ys=ys, until=logged[-1]))
  return runs


def load_reference(path=REFERENCE):
  """The published curves as runs of method PUBLISHED."""
  return [dict(task=r['task'], method=PUBLISHED, seed=str(r['seed']), logdir=None,
               xs=np.asarray(r['xs'], float), ys=np.asarray(r['ys'], float))
          for r in json.loads(pathlib.Path(path).read_text()) if r.get('method', 'dreamer') == 'dreamer']


def load_all(sources, reference=REFERENCE, y='test/return', x='step'):
  """(our runs, published runs) for the scripts; ValueError saying what is missing."""
  missing = [s for s in sources if not parse_source(s)[1].exists()]
  if missing:
    raise ValueError(f'{", ".join(missing)} does not exist; give sweep roots or logdirs.')
  if not pathlib.Path(reference).exists():
    raise ValueError(f'reference file {reference} not found (set --reference).')
  ours = find_runs(sources, y, x)
  if not ours:
    raise ValueError(f'no runs (a metrics.jsonl beside a config.json) under {", ".join(sources)}.')
  return ours, load_reference(reference)


def load_baselines(path=BASELINES):
  """{task: {baseline: final score}}."""
  return json.loads(pathlib.Path(path).read_text())


def group(runs):
  """{(method, task): [runs]} in the order first seen."""
  groups = {}
  for run in runs:
    groups.setdefault((run['method'], run['task']), []).append(run)
  return groups


def final_score(run):
  """A run's last evaluation."""
  return float(run['ys'][-1]) if len(run['ys']) else np.nan


# The sweep's records in <logdir>/stdout.log (scripts/sweep.py writes them).

SWEEP_START = 'sweep: started dreamer.py at {time}'
SWEEP_END = 'sweep: dreamer.py {outcome} after {seconds:.1f} s'
SWEEP_STOPPED = 'was stopped by the sweep'  # Ctrl-C: the logdir stays resumable.
_SWEEP_STARTED = SWEEP_START.split('{')[0]
_SWEEP_END = re.compile(r'^sweep: dreamer\.py (exited with code (-?\d+)|' + SWEEP_STOPPED + r') after ([\d.]+) s$')


def sweep_attempts(logdir):
  """(exit code, or None if the sweep stopped it; seconds) of every attempt the
  sweep recorded the end of, oldest first."""
  try:
    lines = (pathlib.Path(logdir) / 'stdout.log').read_text(errors='replace').splitlines()
  except OSError:
    return []
  ends = [_SWEEP_END.match(line) for line in lines]
  return [(end.group(2) and int(end.group(2)), float(end.group(3))) for end in ends if end]


def wall_clock(logdir):
  """(seconds, how it was measured) of a run: the sum of the sweep's recorded
  attempts, else the span of its episode files' timestamps; (None, ...) if neither."""
  attempts = sweep_attempts(logdir)
  if attempts:
    return sum(seconds for _, seconds in attempts), f'{len(attempts)} sweep attempts'
  names = sorted(pathlib.Path(logdir).glob('*episodes/*.npz'))
  stamps = sorted(datetime.datetime.strptime(f.name.split('-')[0], '%Y%m%dT%H%M%S%f') for f in names)
  if len(stamps) < 2:
    return None, 'unknown'
  return (stamps[-1] - stamps[0]).total_seconds(), 'first to last episode file'


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
