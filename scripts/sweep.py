"""Run a grid of dreamer.py runs, tasks x seeds, in logdirs <root>/<task>/<method>/<seed>/.

Usage:
  python scripts/sweep.py --root logdir [--tasks dmc_walker_walk ...] [--seeds 0 1 2 3 4]
      [--method dreamer] [--jobs 1] [--devices 0,1] [--status | --dry-run] [dreamer.py flags]

The default grid is the paper's 20 DMC tasks (ALGORITHM 9.1) x seeds 0-4. Every flag this
script does not know goes to dreamer.py unchanged (e.g. `--configs debug --steps 400`),
after dreamer.py's own parser (configs.build_parser) has accepted it: a misspelt flag or
a bad value is an error before anything starts. At most --jobs runs at once; --devices
gives each run one GPU (CUDA_VISIBLE_DEVICES), round robin over the least busy. Each
run's output is appended to <logdir>/stdout.log, with the sweep's start, machine and exit
lines. A run's budget is the --steps those flags give dreamer.py (set or from a preset),
else the `steps` of its config.json, else dreamer.py's default; a run that reached it is
skipped, an unfinished one resumes. A failed run does not stop the others. Ctrl-C (or
SIGTERM) stops every run; their logdirs stay resumable. --status prints one line per run;
--dry-run prints one shell command per run.

Exit codes: 0 every run finished, 1 a run failed, 2 bad input, 130 stopped.
"""

import argparse
import datetime
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import configs  # noqa: E402 (TF-free: dreamer.py's flags)
import runs  # noqa: E402 (needs the project root on the path)
import wrappers  # noqa: E402 (TF-free: the paper's task list)

DREAMER = ROOT / 'dreamer.py'
STOP_TIMEOUT = 60  # Seconds a run gets to close its environments after Ctrl-C.


def parse_args(argv):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
  parser.add_argument('--tasks', nargs='+', default=['dmc_' + t for t in wrappers.PAPER_TASKS])
  parser.add_argument('--seeds', nargs='+', type=int, default=list(range(5)))
  parser.add_argument('--method', default='dreamer', help='name of the method folder in each logdir')
  parser.add_argument('--root', type=pathlib.Path, default=pathlib.Path('logdir'))
  parser.add_argument('--jobs', type=int, default=1, help='runs at once')
  parser.add_argument('--devices', default='', help='comma-separated GPU ids, one per run, round robin')
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument('--status', action='store_true', help='print the state of every run and exit')
  mode.add_argument('--dry-run', action='store_true', help='print one shell command per run and exit')
  args, args.extra = parser.parse_known_args(argv)
  args.devices = [d for d in args.devices.split(',') if d]
  if args.jobs < 1:
    parser.error(f'--jobs must be at least 1, got {args.jobs}.')
  for task in args.tasks:
    try:
      wrappers.check_task(task)
    except ValueError as e:
      parser.error(str(e))
  try:
    args.budget = dreamer_budget(args.extra)
  except ValueError as e:
    parser.error(str(e))
  if args.status and not args.root.is_dir():
    parser.error(f'--root {args.root} does not exist, so no run has started there; give the --root the sweep ran in.')
  return args


def dreamer_budget(extra):
  """Checks the flags for dreamer.py with its own parser; the env-step budget they
  give it (--steps, or a preset's), or None if they leave the default. ValueError
  saying what dreamer.py would reject."""
  try:
    parser = configs.build_parser(extra, exit_on_error=False)
    preset = parser.get_default('steps')
    # None: tells the flags given from the defaults.
    parser.set_defaults(steps=None, task=None, seed=None, logdir=None)
    flags, unknown = parser.parse_known_args(extra)
  except argparse.ArgumentError as e:
    raise ValueError(f'dreamer.py would reject {e}.') from None
  if unknown:
    raise ValueError(f'dreamer.py does not know {shlex.join(unknown)}; `python dreamer.py --help` lists its flags.')
  own = [f for f in ('task', 'seed', 'logdir') if getattr(flags, f) is not None]
  if own:
    raise ValueError(f'--{own[0]} is set by the sweep for each run; use --tasks, --seeds and --root instead.')
  if flags.steps is not None and flags.steps <= 0:
    raise ValueError(f'--steps for dreamer.py must be positive, got {flags.steps}.')
  if flags.steps is not None:
    return flags.steps
  return preset if preset != configs.DEFAULTS['steps'] else None


def grid(args):
  """(task, seed, logdir) of every run."""
  return [(task, seed, args.root / task / args.method / str(seed)) for task in args.tasks for seed in args.seeds]


def command(args, task, seed, logdir):
  return [sys.executable, str(DREAMER), *args.extra, '--task', task, '--seed', str(seed), '--logdir', str(logdir)]


def shell_line(args, task, seed, logdir):
  log = shlex.quote(str(logdir / 'stdout.log'))
  return f'mkdir -p {shlex.quote(str(logdir))} && {shlex.join(command(args, task, seed, logdir))} >> {log} 2>&1'


def run_state(logdir, budget):
  """(state, env steps done, budget) of one run. The budget is the one asked for,
  else the run's own config.json. States: running (a live process holds the
  logdir's lock, wherever it was started), finished, failed (its last attempt in
  this sweep exited non-zero), unfinished (started, stopped before its budget),
  not started. The one place that decides."""
  config = runs.read_config(logdir)
  budget = budget or config.get('steps') or configs.DEFAULTS['steps']
  steps = runs.env_steps(logdir, config)
  attempts = runs.sweep_attempts(logdir)
  if runs.lock_holder(logdir):
    state = 'running'
  elif budget and steps >= budget:
    state = 'finished'
  elif attempts and attempts[-1][0] not in (0, None):
    state = 'failed'
  elif steps or config or attempts:
    state = 'unfinished'
  else:
    state = 'not started'
  return state, steps, budget


def status_line(task, seed, logdir, budget):
  state, steps, budget = run_state(logdir, budget)
  _, returns = runs.read_metrics(logdir)
  last = f'{returns[-1]:.1f}' if len(returns) else '-'
  return f'{task:<32} seed {seed:<3} {steps:>9} / {budget:<9} test return {last:>7}  {state}'


class Child:
  """One dreamer.py process, its stdout.log and the device it was given."""

  def __init__(self, args, task, seed, logdir, device):
    self.name, self.logdir, self.device = f'{task} seed {seed}', logdir, device
    logdir.mkdir(parents=True, exist_ok=True)
    self.log = open(logdir / 'stdout.log', 'a')
    self.log.write(runs.SWEEP_START.format(time=datetime.datetime.now().isoformat(timespec='seconds')) + '\n')
    self.log.write(runs.SWEEP_MACHINE + json.dumps(dict(machine(), device=device)) + '\n')
    self.log.flush()
    env = dict(os.environ, PYTHONUNBUFFERED='1')  # stdout.log shows progress as it happens.
    if device is not None:
      env['CUDA_VISIBLE_DEVICES'] = device
    self.start = time.time()
    # Its own process group: Ctrl-C reaches it through `stop`, once, with its workers.
    self.process = subprocess.Popen(command(args, task, seed, logdir), stdout=self.log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)

  def close(self, outcome):
    self.log.write('\n' + runs.SWEEP_END.format(outcome=outcome, seconds=time.time() - self.start) + '\n')
    self.log.close()

  def stop(self):
    """SIGINT to the run and its environment workers; SIGKILL if it does not exit."""
    try:
      os.killpg(self.process.pid, signal.SIGINT)
      self.process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
      os.killpg(self.process.pid, signal.SIGKILL)
      self.process.wait()
    except ProcessLookupError:
      pass
    self.close(runs.SWEEP_STOPPED)


def machine(cache={}):
  """runs.machine(), looked up once per sweep."""
  if not cache:
    cache.update(runs.machine())
  return cache


def pick_device(devices, children):
  """The device with the fewest runs on it, the first such in order; None without devices."""
  if not devices:
    return None
  busy = [c.device for c in children]
  return min(devices, key=busy.count)


def sweep(args):
  pending = []
  for task, seed, logdir in grid(args):
    if run_state(logdir, args.budget)[0] == 'finished':
      print(f'sweep: {task} seed {seed} already reached its budget; skipped.', flush=True)
    else:
      pending.append((task, seed, logdir))
  children, failed = [], []
  try:
    while pending or children:
      while pending and len(children) < args.jobs:
        child = Child(args, *pending.pop(0), pick_device(args.devices, children))
        device = f' on device {child.device}' if child.device is not None else ''
        print(f'sweep: started {child.name}{device}, output in {child.logdir / "stdout.log"}', flush=True)
        children.append(child)
      time.sleep(0.5)
      for child in [c for c in children if c.process.poll() is not None]:
        code = child.process.returncode
        child.close(f'exited with code {code}')
        children.remove(child)
        if code:
          failed.append(child.name)
        print(f'sweep: {child.name} {"failed with exit code " + str(code) if code else "finished"}.', flush=True)
  except KeyboardInterrupt:
    try:
      print(f'sweep: stopping {len(children)} runs; run the same command again to resume.', flush=True)
    finally:  # Even if stdout is gone.
      for child in children:
        child.stop()
    return 130
  if failed:
    print(f'sweep: {len(failed)} runs failed: {", ".join(failed)}; see their stdout.log.', flush=True)
    return 1
  return 0


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.dry_run or args.status:
    with runs.stdout_may_close():  # `--status | head` stops quietly.
      for run in grid(args):
        print(shell_line(args, *run) if args.dry_run else status_line(*run, args.budget), flush=True)
    return 0
  # Ctrl-C and SIGTERM stop the sweep, even if it was started with SIGINT ignored (as
  # background jobs are); its runs then start with SIGINT at its default.
  for number in (signal.SIGINT, signal.SIGTERM):
    signal.signal(number, signal.default_int_handler)
  return sweep(args)


if __name__ == '__main__':
  sys.exit(main())
