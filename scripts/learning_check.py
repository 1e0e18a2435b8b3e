"""Learning check: train Dreamer on one task and compare its test returns with the
authors' published curves.

Usage:
  python scripts/learning_check.py --task dmc_cartpole_balance --steps 100000 \\
      --logdir logdir/check [--reference PATH] [--plot PATH] [--configs cpu] \\
      [-- extra dreamer.py flags]

Runs dreamer.py (which resumes by itself if the logdir already holds a run), then
prints step | our test return | published mean | min | max | published seeds, where
a published mean marked * is interpolated between the published evaluations (the
rule of runs.py, "Reached"; none beyond the published curve's end), writes
<logdir>/learning_check.png and <logdir>/learning_check.json, and exits 0 (PASS)
when the last test return with a published value is >= 60% of the published mean at
that step and above the random-policy score (where known), 1 (FAIL) otherwise, 2 for
an unknown task or a bad reference file. --no-train only evaluates an existing logdir.
"""

import argparse
import json
import pathlib
import shlex
import subprocess
import sys

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import runs  # noqa: E402 (needs the project root on the path)

FRACTION = 0.6  # Of the published mean at the same env step.
# Return of a random policy on the paper's tasks, where known.
RANDOM_SCORES = {
    'dmc_cartpole_balance': 135.0,
    'dmc_cartpole_balance_sparse': 11.0,
    'dmc_pendulum_swingup': 11.0,
}


def error(message, code):
  print(f'learning_check: error: {message}', file=sys.stderr, flush=True)
  return code


def parse_args(argv):
  """Our flags, plus everything unknown or after `--`, passed to dreamer.py."""
  argv = list(argv)
  extra = []
  if '--' in argv:
    index = argv.index('--')
    argv, extra = argv[:index], argv[index + 1:]
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
      allow_abbrev=False)
  parser.add_argument('--task', required=True, help='dmc_<domain>_<task>')
  parser.add_argument('--steps', default='100000', help='env steps to train (dreamer.py checks the value)')
  parser.add_argument('--logdir', required=True, type=pathlib.Path)
  parser.add_argument('--reference', type=pathlib.Path, default=runs.REFERENCE, help='published curves (JSON)')
  parser.add_argument('--plot', type=pathlib.Path, default=None, help='PNG path (default <logdir>/learning_check.png)')
  parser.add_argument('--configs', nargs='+', default=['cpu'], help='dreamer.py presets')
  parser.add_argument('--no-train', action='store_true', help='only evaluate an existing logdir')
  args, unknown = parser.parse_known_args(argv)
  args.extra = unknown + extra
  return args


def dreamer_command(args):
  return [sys.executable, str(ROOT / 'dreamer.py'), '--configs', *args.configs,
          '--task', args.task, '--steps', str(args.steps), '--logdir', str(args.logdir), *args.extra]


def load_reference(path, task):
  """The published runs of `task`, or raise KeyError naming the available tasks."""
  every = runs.load_reference(path)
  found = [r for r in every if r['task'] == task]
  if not found:
    tasks = sorted({r['task'] for r in every})
    raise KeyError(f'Unknown task {task!r} in {path}; available tasks: {", ".join(tasks)}')
  return found


def published(reference, steps):
  """Mean, min and max over the seeds that reached each of `steps` (runs.value_at;
  NaN where none did), their number, and whether any value is interpolated."""
  curves = np.array([runs.value_at(r['xs'], r['ys'], steps) for r in reference])
  exact = np.array([runs.measured(r['xs'], steps) for r in reference])
  done = np.isfinite(curves)
  seeds = done.sum(0)
  pick = lambda fill, reduce: np.where(seeds > 0, reduce(np.where(done, curves, fill), 0), np.nan)
  mean = np.where(seeds > 0, np.where(done, curves, 0).sum(0) / np.maximum(seeds, 1), np.nan)
  return mean, pick(np.inf, np.min), pick(-np.inf, np.max), seeds, np.any(done & ~exact, 0)


def verdict(task, step, value, mean):
  """(passed, one-line verdict, threshold numbers) for the last evaluation."""
  threshold = FRACTION * mean
  random = RANDOM_SCORES.get(task)
  above_threshold = value >= threshold
  above_random = random is None or value > random
  passed = bool(above_threshold and above_random)
  line = (f'{"PASS" if passed else "FAIL"}: last test return {value:.1f} at step {step} '
          f'{">=" if above_threshold else "<"} {FRACTION:.0%} of published mean {mean:.1f} ({threshold:.1f})')
  if random is None:
    line += f' (no random-policy score known for {task}; that criterion skipped)'
  else:
    line += f' and {">" if above_random else "<="} random {random:g}'
  numbers = dict(fraction=FRACTION, published_mean=float(mean), threshold=float(threshold),
                 random=random, last_step=int(step), last_test_return=float(value))
  return passed, line, numbers


def plot(path, task, steps, returns, reference, random):
  xmax = max(float(steps.max()) * 1.05, 1.0)
  grid = np.concatenate([np.linspace(0, xmax, 200), *[r['xs'] for r in reference]])
  grid = np.unique(grid[grid <= xmax])
  mean, low, high, _, _ = published(reference, grid)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  ax.fill_between(grid, low, high, color='tab:gray', alpha=0.3, label=f'published min-max ({len(reference)} seeds)')
  ax.plot(grid, mean, color='tab:gray', label='published mean (linear between its evaluations)')
  measured = np.unique(np.concatenate([r['xs'] for r in reference]))
  measured = measured[measured <= xmax]
  ax.plot(measured, published(reference, measured)[0], 'o', color='tab:gray', ms=4, label='published evaluations')
  ax.plot(grid, FRACTION * mean, color='tab:gray', ls=':', label=f'{FRACTION:.0%} of published mean')
  if random is not None:
    ax.axhline(random, color='tab:red', ls='--', lw=1, label=f'random policy ({random:g})')
  ax.plot(steps, returns, 'o-', color='tab:blue', label='ours')
  ax.set(xlim=(0, xmax), xlabel='env steps', ylabel='test return', title=f'Learning check: {task}')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    reference = load_reference(args.reference, args.task)
  except ValueError as e:  # Missing, empty or malformed (runs.load_reference).
    return error(str(e), 2)
  except KeyError as e:
    return error(e.args[0], 2)

  command = None
  if not args.no_train:
    command = dreamer_command(args)
    print('Running:', shlex.join(command), flush=True)
    code = subprocess.run(command).returncode
    if code != 0:
      code = code if code > 0 else 128 - code  # Killed by a signal.
      return error(f'dreamer.py failed with exit code {code}; see its output above.', code)

  metrics = args.logdir / 'metrics.jsonl'
  if not metrics.exists():
    return error(f'{metrics} does not exist; nothing to evaluate.', 1)
  steps, returns = runs.read_metrics(args.logdir)
  steps = steps.astype(np.int64)
  if not len(steps):
    return error(f'no test/return in {metrics}; no evaluation has run yet.', 1)

  mean, low, high, seeds, interpolated = published(reference, steps)
  value = lambda v: None if not np.isfinite(v) else float(v)
  rows = [dict(step=int(s), test_return=float(r), published_mean=value(m), published_min=value(lo), published_max=value(hi),
               published_seeds=int(n), published_interpolated=bool(i))
          for s, r, m, lo, hi, n, i in zip(steps, returns, mean, low, high, seeds, interpolated)]
  header = ('step', 'our test return', 'published mean', 'published min', 'published max', 'published seeds')
  print(f'\nLearning check of {args.task} against {len(reference)} published seeds ({runs.shown_path(args.reference)}):')
  print(' | '.join(f'{h:>15}' for h in header))
  cell = lambda v, mark='': f'{"-" if v is None else f"{v:.1f}{mark}":>15}'
  for row in rows:
    mark = '*' if row['published_interpolated'] else ''
    print(f'{row["step"]:>15} | {cell(row["test_return"])} | {cell(row["published_mean"], mark)} | '
          f'{cell(row["published_min"], mark)} | {cell(row["published_max"], mark)} | {row["published_seeds"]:>15}')
  if interpolated.any():
    print('* interpolated between the published evaluations either side of the step.')
  random = RANDOM_SCORES.get(args.task)
  if random is None:
    print(f'Random-policy baseline: unknown for {args.task}; that criterion is skipped.')
  else:
    print(f'Random-policy baseline: {random:g}')

  plot_path = args.plot or args.logdir / 'learning_check.png'
  plot(plot_path, args.task, steps, returns, reference, random)
  within = np.flatnonzero(np.isfinite(mean))
  if not len(within):
    return error(f'no evaluation of {metrics} lies within the published curve of {args.task} '
                 f'(it ends at {max(r["xs"][-1] for r in reference):g} env steps).', 1)
  last = within[-1]  # The last evaluation that has a published value.
  passed, line, numbers = verdict(args.task, steps[last], returns[last], mean[last])
  shown = lambda words: [runs.shown_path(w) if w.startswith('/') else w for w in words]
  report = dict(task=args.task, reference=runs.shown_path(args.reference), command=command and shlex.join(shown(command)),
                argv=shown([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]), rows=rows,
                verdict='PASS' if passed else 'FAIL', verdict_line=line, plot=runs.shown_path(plot_path), **numbers)
  (args.logdir / 'learning_check.json').write_text(json.dumps(report, indent=2) + '\n')
  print(f'Wrote {plot_path} and {args.logdir / "learning_check.json"}')
  print(line, flush=True)
  return 0 if passed else 1


if __name__ == '__main__':
  sys.exit(main())
