"""Reading runs without TensorFlow: step counts, configs, metrics, the sweep's records
and the published reference scores. Shared by the scripts in `scripts/` (learning
check, sweep status, plots, comparison, report) and by `tools.py`."""

import datetime
import json
import pathlib
import re

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


def value_at(xs, ys, steps):
  """One curve linearly interpolated at `steps`. Before its first point the first
  value holds; after its last point the last value holds for one evaluation interval
  (the spacing of the last two points), so a run that stopped at its budget counts
  as having reached it; beyond that NaN ("not reached")."""
  xs, ys, steps = np.asarray(xs, float), np.asarray(ys, float), np.asarray(steps, float)
  if not len(xs):
    return np.full(steps.shape, np.nan)
  interval = xs[-1] - xs[-2] if len(xs) > 1 else 0.0
  return np.where(steps <= xs[-1] + interval, np.interp(steps, xs, ys), np.nan)


# Sets of runs: ours under roots, the published ones from the reference file.
# A run is dict(task, method, seed, logdir, xs, ys).

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
      runs.append(dict(
          task=task, method=method or (parts[1] if len(parts) == 3 else root.resolve().name),
          seed=str(config.get('seed', logdir.name)), logdir=logdir, xs=xs, ys=ys))
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
  """(attempts, going): (exit code, or None if the sweep stopped it; seconds) of every
  attempt the sweep recorded the end of, oldest first; going if the last start line
  has no end line yet (the run is going on, or its sweep was killed)."""
  try:
    lines = (pathlib.Path(logdir) / 'stdout.log').read_text(errors='replace').splitlines()
  except OSError:
    return [], False
  attempts, going = [], False
  for line in lines:
    end = _SWEEP_END.match(line)
    if end:
      attempts.append((end.group(2) and int(end.group(2)), float(end.group(3))))
      going = False
    elif line.startswith(_SWEEP_STARTED):
      going = True
  return attempts, going


def wall_clock(logdir):
  """(seconds, how it was measured) of a run: the sum of the sweep's recorded
  attempts, else the span of its episode files' timestamps; (None, ...) if neither."""
  attempts, _ = sweep_attempts(logdir)
  if attempts:
    return sum(seconds for _, seconds in attempts), f'{len(attempts)} sweep attempts'
  names = sorted(pathlib.Path(logdir).glob('*episodes/*.npz'))
  stamps = sorted(datetime.datetime.strptime(f.name.split('-')[0], '%Y%m%dT%H%M%S%f') for f in names)
  if len(stamps) < 2:
    return None, 'unknown'
  return (stamps[-1] - stamps[0]).total_seconds(), 'first to last episode file'
