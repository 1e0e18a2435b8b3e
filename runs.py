"""Runs in their logdirs, without TensorFlow: step counts, configs, metrics, the
sweep's records, the published reference scores, and the logdir lock. Shared by
dreamer.py and storage.py and by the scripts in `scripts/` (learning check, sweep,
plots, comparison, report)."""

import atexit
import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import re
import platform
import shutil
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent
REFERENCE = ROOT / 'reference' / 'dreamer_curves.json'
BASELINES = ROOT / 'reference' / 'baselines.json'
PUBLISHED = 'published'  # Method name of the authors' curves beside ours.
MAX_SCORE = 1000.0  # The most a DMC episode of 1000 env steps can return.
# Env steps the scripts compare at by default: points of the published curves' grid,
# 5e3 + k x 1e5 (and of our default evaluations, 5e3 + k x 1e4), so that neither side is
# interpolated; 4.905e6 is the last published point.
STEPS = (1.05e5, 5.05e5, 1.005e6, 4.905e6)


# One logdir: episodes, config, metrics (ALGORITHM 7).

def episode_length(filename):
  """Rows of an episode (transitions including the first), read from its name."""
  return int(pathlib.Path(filename).stem.rsplit('-', 1)[-1])


def count_steps(directory, action_repeat):
  """Env steps collected so far: sum of (length - 1) x action_repeat (ALGORITHM 7.3)."""
  files = pathlib.Path(directory).glob('*.npz')
  return sum((episode_length(f) - 1) * action_repeat for f in files)


def read_config(logdir):
  """The run's config.json as a dict; {} if it is missing or unreadable."""
  try:
    return json.loads((pathlib.Path(logdir) / 'config.json').read_text())
  except (OSError, ValueError):
    return {}


def env_steps(logdir, config=None):
  """Env steps of a run's training episodes, with the action repeat of its config;
  for a run kept without its episodes (its small files in results/), the last step
  of its metrics.jsonl."""
  config = read_config(logdir) if config is None else config
  if not (pathlib.Path(logdir) / 'episodes').is_dir():
    steps, _ = read_metrics(logdir, y='step')
    return int(steps[-1]) if len(steps) else 0
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


# Reached: the one rule of every script (compare, plotting, report, learning check),
# for our runs and the published curves alike. A curve has reached env step S when it
# holds an evaluation at S or later. Its value at S is then the evaluation at S, else
# the linear interpolation between the evaluations either side of S, or, before its
# first evaluation, that first value; the scripts mark such values as not measured at
# S. A curve that has not reached S has no value there ("not reached"), however far its
# training got. A run trained with --steps S on the evaluation grid (prefill + k x
# eval_every, e.g. 1.05e5) evaluates at S itself, so it has reached S.
REACHED = 'a curve has reached an env step when it holds an evaluation at that step or later'


def value_at(xs, ys, steps):
  """One curve at `steps` by the rule above (REACHED): NaN where not reached."""
  xs, ys, steps = np.asarray(xs, float), np.asarray(ys, float), np.asarray(steps, float)
  if not len(xs):
    return np.full(steps.shape, np.nan)
  return np.where(steps <= xs[-1], np.interp(steps, xs, ys), np.nan)


def measured(xs, steps):
  """Whether each of `steps` is one of the curve's evaluations (not interpolated)."""
  return np.isin(np.round(np.asarray(steps, float)), np.round(np.asarray(xs, float)))


def shown_path(path):
  """A path as the scripts' reports write it, naming no folder of this machine:
  relative to the working directory or the repository if inside one, else its last
  part."""
  path = pathlib.Path(path)
  if not path.is_absolute():
    return str(path)
  for base in (pathlib.Path.cwd(), ROOT):
    if path.is_relative_to(base):
      return str(path.relative_to(base))
  return path.name


# Sets of runs: ours under roots, the published ones from the reference file.
# A run is dict(task, method, seed, logdir, xs, ys).

def parse_source(text):
  """'PATH' or 'METHOD=PATH' -> (method or None, path)."""
  method, sep, path = text.rpartition('=')
  return (method or None) if sep else None, pathlib.Path(path)


def find_runs(sources, y='test/return', x='step'):
  """Every run with a metrics.jsonl under the given sources ('PATH' or
  'METHOD=PATH'). Its method is METHOD, else the name of the folder that holds the
  run's seed folder, as in <task>/<method>/<seed>/ at any depth below the source
  (a sweep root, its parent, or the ablations' root: each variant its own method);
  for a source that is itself the logdir, the logdir's name. Task and seed come
  from the run's config.json where it has them, else from that layout."""
  runs = []
  for source in sources:
    method, root = parse_source(source)
    for metrics in sorted(root.glob('**/metrics.jsonl')):
      logdir = metrics.parent
      parts = logdir.relative_to(root).parts
      config = read_config(logdir)
      task = config.get('task') or (parts[-3] if len(parts) >= 3 else None)
      if task is None:
        continue  # Not a Dreamer run: no config and not in the sweep layout.
      xs, ys = read_metrics(logdir, y, x)
      folder = (logdir.parent if parts else logdir).resolve()
      runs.append(dict(task=task, method=method or folder.name, seed=str(config.get('seed', logdir.name)),
                       logdir=logdir, xs=xs, ys=ys))
  return runs


def read_json(path, what):
  """A JSON file's content; ValueError naming the file if it is missing, empty or
  not JSON."""
  try:
    text = pathlib.Path(path).read_text()
  except OSError as e:
    raise ValueError(f'{what} {path} cannot be read ({e.strerror}); set it with --reference or --baselines.') from None
  try:
    return json.loads(text)
  except ValueError as e:
    state = 'is empty' if not text.strip() else f'is not JSON ({e})'
    raise ValueError(f'{what} {path} {state}; give a file in the format of reference/README.md.') from None


def load_reference(path=REFERENCE):
  """The published curves as runs of method PUBLISHED; ValueError naming the file
  if it is not a list of runs {task, seed, xs, ys} (reference/README.md)."""
  data = read_json(path, 'reference file')
  found = []
  for i, r in enumerate(data if isinstance(data, list) else [data]):
    try:
      xs, ys = np.asarray(r['xs'], float), np.asarray(r['ys'], float)
      if xs.ndim != 1 or xs.shape != ys.shape or np.any(np.diff(xs) <= 0):
        raise ValueError('xs and ys must be lists of equal length, xs increasing')
      run = dict(task=str(r['task']), method=PUBLISHED, seed=str(r['seed']), logdir=None, xs=xs, ys=ys)
    except (KeyError, TypeError, ValueError) as e:
      problem = f'lacks the key {e}' if isinstance(e, KeyError) else f'is not valid: {e}'
      raise ValueError(f'reference file {path}: run {i} {problem}; each run needs task, seed, xs, ys '
                       '(reference/README.md).') from None
    if r.get('method', 'dreamer') == 'dreamer':
      found.append(run)
  if not found:
    raise ValueError(f'reference file {path} holds no Dreamer runs; give a file in the format of reference/README.md.')
  return found


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
  """{task: {baseline: final score}}; ValueError naming the file if it is not that."""
  data = read_json(path, 'baselines file')
  if not isinstance(data, dict) or not all(
      isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values()) for v in data.values()):
    raise ValueError(f'baselines file {path} is not {{task: {{baseline: score}}}}; see reference/README.md.')
  return data


def group(runs):
  """{(method, task): [runs]} in the order first seen."""
  groups = {}
  for run in runs:
    groups.setdefault((run['method'], run['task']), []).append(run)
  return groups


def final_score(run):
  """A run's last evaluation."""
  return float(run['ys'][-1]) if len(run['ys']) else np.nan


# The scripts' console output.

@contextlib.contextmanager
def stdout_may_close():
  """Printing inside ends quietly when the reader of stdout has gone (`... | head`):
  the rest of the output is dropped instead of ending in a BrokenPipeError."""
  try:
    yield
    sys.stdout.flush()
  except BrokenPipeError:
    # Python flushes stdout again at exit; point it at /dev/null so that cannot fail.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# The machine a run trains on, recorded by the sweep (SWEEP_MACHINE) and shown by the
# report.

PACKAGES = ('tensorflow', 'tensorflow-probability', 'tf-keras', 'numpy', 'mujoco', 'dm-control', 'ale-py')


def machine():
  """{cpu, cores, gpus, python, packages}: CPU model, logical cores, NVIDIA GPUs
  (from nvidia-smi; none without it), and the versions of the libraries a run uses,
  read without importing them."""
  import importlib.metadata
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), cpu)
  except OSError:
    pass
  gpus = []
  if shutil.which('nvidia-smi'):
    try:
      result = subprocess.run(['nvidia-smi', '--query-gpu=name', '--format=csv,noheader'], capture_output=True,
                              text=True, timeout=20)
      gpus = [line.strip() for line in result.stdout.splitlines() if line.strip()] if not result.returncode else []
    except (OSError, subprocess.TimeoutExpired):
      pass
  packages = {}
  for name in PACKAGES:
    try:
      packages[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return dict(cpu=cpu, cores=os.cpu_count(), gpus=gpus, python=platform.python_version(), packages=packages)


# The sweep's records in <logdir>/stdout.log (scripts/sweep.py writes them).

SWEEP_START = 'sweep: started dreamer.py at {time}'
SWEEP_END = 'sweep: dreamer.py {outcome} after {seconds:.1f} s'
SWEEP_STOPPED = 'was stopped by the sweep'  # Ctrl-C: the logdir stays resumable.
SWEEP_MACHINE = 'sweep: machine '  # Followed by machine() as JSON, and the GPU the run was given.
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


def sweep_machine(logdir):
  """The machine record of the sweep's last start of the run (machine(), with
  `device`: its CUDA_VISIBLE_DEVICES or None), or None."""
  try:
    lines = (pathlib.Path(logdir) / 'stdout.log').read_text(errors='replace').splitlines()
  except OSError:
    return None
  for line in reversed(lines):
    if line.startswith(SWEEP_MACHINE):
      try:
        return json.loads(line[len(SWEEP_MACHINE):])
      except ValueError:
        return None
  return None


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
