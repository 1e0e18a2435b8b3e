"""Soak test (not part of CI): a long debug-size run that is SIGKILLed at random
moments and restarted on the same logdir, checking that

- the trainer's resident memory (with its environment workers) stays flat from
  run to run,
- its open file descriptors stay flat within a run,
- the environment workers of a killed trainer exit (no leaked processes),
- every episode written survives: each file stays on disk and loads, and the
  step count never goes back,

then one last run without a kill, which must resume and finish with exit code 0.
It prints one line per run and a verdict, and exits 1 if a check failed.

Usage: python scripts/soak.py --minutes 10 [--logdir /tmp/soak]
"""

import argparse
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tf_startup  # noqa: E402,F401 (after the path set-up): imports TensorFlow with its start-up messages filtered.
import runs  # noqa: E402
import storage  # noqa: E402

COMMAND = [sys.executable, str(ROOT / 'dreamer.py'), '--configs', 'debug', '--task', 'dmc_cartpole_balance', '--log_images', 'False', '--checkpoints', '2']


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--minutes', type=float, default=10.0, help='how long to kill and restart (the final run comes after)')
  parser.add_argument('--logdir', type=pathlib.Path, default=None, help='default: a new temporary folder')
  parser.add_argument('--kill_after', type=float, nargs=2, default=(20.0, 120.0), help='each run is killed after a uniform time in this range of seconds')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  if args.minutes <= 0 or not 0 < args.kill_after[0] <= args.kill_after[1]:
    parser.error('--minutes must be positive and --kill_after two increasing positive seconds.')
  return args


def children(pid):
  """Pids of the direct children of `pid` (from the parent pid in /proc/<pid>/stat)."""
  found = []
  for stat in pathlib.Path('/proc').glob('[0-9]*/stat'):
    try:
      parent = int(stat.read_text().rsplit(')', 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
      continue
    if parent == pid:
      found.append(int(stat.parent.name))
  return found


def rss_mib(pid):
  try:
    for line in pathlib.Path(f'/proc/{pid}/status').read_text().splitlines():
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 1024
  except OSError:
    pass
  return 0.0


def open_fds(pid):
  try:
    return len(os.listdir(f'/proc/{pid}/fd'))
  except OSError:
    return None


def alive(pid):
  try:
    state = pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
  except OSError:
    return False
  return state != 'Z'  # A zombie has exited; only its parent's wait is missing.


def episodes_check(directory, seen):
  """Problems with the episodes: a file seen before that is gone, or a file that
  does not load. Adds the current files to `seen`."""
  problems = [f'episode {name} disappeared' for name in seen if not (directory / name).exists()]
  for filename in directory.glob('*.npz'):
    try:
      storage.load_episode(filename)
    except ValueError as e:
      problems.append(f'episode {filename.name} {e}')
    seen.add(filename.name)
  return problems


def run_once(logdir, steps, lifetime):
  """Run the trainer until it exits or `lifetime` seconds pass (then SIGKILL).
  Returns its exit code and samples of (rss, fds) and the worker pids seen."""
  with open(logdir.parent / f'{logdir.name}.log', 'a') as log:
    process = subprocess.Popen(COMMAND + ['--logdir', str(logdir), '--steps', str(steps)], stdout=log, stderr=subprocess.STDOUT)
  start, samples, workers = time.time(), [], set()
  while process.poll() is None and time.time() - start < lifetime:
    kids = children(process.pid)
    workers.update(kids)
    samples.append((rss_mib(process.pid) + sum(rss_mib(kid) for kid in kids), open_fds(process.pid)))
    time.sleep(1.0)
  if process.poll() is None:
    process.send_signal(signal.SIGKILL)
  return process.wait(), samples, workers


def leaked(workers, timeout=60.0):
  """The workers still alive `timeout` seconds after their trainer died."""
  deadline = time.time() + timeout
  while time.time() < deadline and any(alive(pid) for pid in workers):
    time.sleep(0.5)
  return [pid for pid in workers if alive(pid)]


def main(args):
  rng = random.Random(args.seed)
  logdir = args.logdir or pathlib.Path(tempfile.mkdtemp(prefix='soak-')) / 'run'
  episodes, seen, problems = logdir / 'episodes', set(), []
  peaks, steps, run = [], 0, 0
  end = time.time() + 60 * args.minutes
  print(f'Soak test for {args.minutes:g} minutes in {logdir}; trainer output in {logdir}.log', flush=True)
  while time.time() < end:
    run += 1
    lifetime = rng.uniform(*args.kill_after)
    code, samples, workers = run_once(logdir, 10**7, lifetime)
    stray = leaked(workers)
    problems += [f'run {run}: worker {pid} outlived its trainer' for pid in stray]
    problems += [f'run {run}: {p}' for p in episodes_check(episodes, seen)]
    now = runs.count_steps(episodes, 2)
    if now < steps:
      problems.append(f'run {run}: step count went back from {steps} to {now}')
    fds = [fd for _, fd in samples if fd is not None]
    half = len(fds) // 2
    if half >= 5 and max(fds[half:]) > max(fds[:half]) + 8:
      problems.append(f'run {run}: open files grew from {max(fds[:half])} to {max(fds[half:])}')
    peak = max((rss for rss, _ in samples), default=0.0)
    peaks.append(peak)
    print(f'run {run}: killed after {lifetime:.0f}s (exit {code}), env steps {steps} -> {now}, '
          f'peak RSS {peak:.0f} MiB, open files {fds[0] if fds else "-"} -> {fds[-1] if fds else "-"}, '
          f'workers {len(workers)}, leaked {len(stray)}', flush=True)
    steps = now
  first, last = peaks[:max(1, len(peaks) // 4)], peaks[-max(1, len(peaks) // 4):]
  if max(last) > 1.25 * max(first):
    problems.append(f'peak RSS grew from {max(first):.0f} MiB (first runs) to {max(last):.0f} MiB (last runs)')
  saved = list((logdir / 'checkpoints').glob('ckpt-*'))  # A run killed before its first phase saves none.
  code, _, workers = run_once(logdir, steps + 400, 1800)
  final = (logdir.parent / f'{logdir.name}.log').read_text().rsplit('Config (', 1)[-1]
  if code != 0:
    problems.append(f'the final run exited with {code}')
  if saved and 'Resumed from' not in final:
    problems.append('the final run did not resume from the checkpoints')
  problems += [f'final run: worker {pid} outlived its trainer' for pid in leaked(workers)]
  problems += [f'final run: {p}' for p in episodes_check(episodes, seen)]
  print(f'final run: exit {code}, env steps {steps} -> {runs.count_steps(episodes, 2)}, {len(seen)} episodes on disk, '
        f'leftover temporary files {len(list(episodes.glob(".*.tmp")))}', flush=True)
  for problem in problems:
    print('FAIL:', problem)
  print(f'{"FAIL" if problems else "PASS"}: {run} killed runs and a final one in {args.minutes:g} minutes; '
        f'peak RSS per run {min(peaks):.0f}-{max(peaks):.0f} MiB.', flush=True)
  return 1 if problems else 0


if __name__ == '__main__':
  sys.exit(main(parse_args()))
