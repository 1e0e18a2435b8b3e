"""Our test returns beside the published Dreamer curves at chosen env steps, per task.

Usage:
  python scripts/compare.py [ROOT | METHOD=PATH ...] [--steps 1.05e5 5.05e5 1.005e6 4.905e6]
      [--reference PATH] [--y test/return] [--out DIR]

Each source is a sweep root (<root>/<task>/<method>/<seed>/) or a single logdir; a
METHOD= prefix names its method, so two logdirs of one task compare in one table. For
every task and step: our mean and standard error over seeds (sample std / sqrt(n)), the
published mean and sample std with the number of published seeds there, and the
difference in units of that std, flagged (!) beyond 2. The default steps are points of
the published grid (5e3 + k x 1e5). Where, by the rule of runs.py ("Reached"), a curve
has reached a step but holds no evaluation at it, its value is interpolated and marked
*. The last rows average over the tasks where both sides have a value. Writes
comparison.csv and comparison.json into --out, then prints a Markdown table.
"""

import argparse
import csv
import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import runs  # noqa: E402 (needs the project root on the path)

FLAG = 2.0  # |difference| in published stds beyond which a row is flagged.
MEAN_ROW = 'mean over tasks'
COLUMNS = ('task', 'method', 'step', 'mean', 'se', 'reached', 'seeds', 'interpolated', 'published_curve',
           'published_mean', 'published_std', 'published_seeds', 'published_interpolated', 'difference', 'flagged')
INTERPOLATED = ('* not measured at this step: interpolated between the evaluations either side (before a '
                "curve's first evaluation, that first value)")


def values(group, steps):
  """([seeds, steps] of every run's curve at `steps`, NaN where not reached;
  [seeds, steps] whether that value is an evaluation at the step)."""
  shape = (len(group), len(steps))
  ys = np.array([runs.value_at(r['xs'], r['ys'], steps) for r in group]).reshape(shape)
  exact = np.array([runs.measured(r['xs'], steps) for r in group], bool).reshape(shape)
  return ys, exact


def row(task, method, step, ours, ours_exact, published, published_exact):
  """One comparison from our seeds' and the published seeds' values at one step
  and whether each was measured there."""
  interpolated = bool(np.any(~ours_exact[np.isfinite(ours)]))
  published_interpolated = bool(np.any(~published_exact[np.isfinite(published)]))
  ours, published = ours[np.isfinite(ours)], published[np.isfinite(published)]
  mean = ours.mean() if len(ours) else np.nan
  se = ours.std(ddof=1) / np.sqrt(len(ours)) if len(ours) > 1 else np.nan
  pub_mean = published.mean() if len(published) else np.nan
  pub_std = published.std(ddof=1) if len(published) > 1 else np.nan
  difference = (mean - pub_mean) / pub_std if pub_std > 0 else np.nan
  return dict(task=task, method=method, step=step, mean=mean, se=se, reached=len(ours), interpolated=interpolated,
              published_mean=pub_mean, published_std=pub_std, published_seeds=len(published),
              published_interpolated=published_interpolated, difference=difference, flagged=bool(abs(difference) > FLAG))


def mean_row(method, step, rows):
  """Means over the tasks where ours and the published curve have a value. Its
  `reached` counts those tasks, `seeds` all tasks, `published_seeds` the published
  seeds over those tasks."""
  both = [r for r in rows if np.isfinite(r['mean']) and np.isfinite(r['published_mean'])]
  average = lambda key: float(np.nanmean([r[key] for r in both])) if both else np.nan
  difference = average('difference') if any(np.isfinite(r['difference']) for r in both) else np.nan
  return dict(task=MEAN_ROW, method=method, step=step, mean=average('mean'), se=np.nan, reached=len(both),
              seeds=len(rows), interpolated=any(r['interpolated'] for r in both),
              published_curve=any(r['published_curve'] for r in rows), published_mean=average('published_mean'),
              published_std=np.nan, published_seeds=sum(r['published_seeds'] for r in both),
              published_interpolated=any(r['published_interpolated'] for r in both), difference=difference,
              flagged=False)


def compare(ours, reference, steps):
  """Rows for every task of ours x method x step, then the means over tasks."""
  groups, published = runs.group(ours), runs.group(reference)
  methods = list(dict.fromkeys(r['method'] for r in ours))
  rows = []
  for task in sorted({r['task'] for r in ours}):
    curves = published.get((runs.PUBLISHED, task), [])
    theirs, theirs_exact = values(curves, steps)
    for method in methods:
      group = groups.get((method, task), [])
      mine, mine_exact = values(group, steps)
      for i, step in enumerate(steps):
        rows.append(dict(row(task, method, step, mine[:, i], mine_exact[:, i], theirs[:, i], theirs_exact[:, i]),
                         seeds=len(group), published_curve=bool(curves)))
  for method in methods:
    for step in steps:
      rows.append(mean_row(method, step, [r for r in rows if r['method'] == method and r['step'] == step]))
  return rows


def number(value, digits=1):
  return '-' if not np.isfinite(value) else f'{value:.{digits}f}'


def mean_se(mean, spread, interpolated):
  """'mean ± spread', with * if interpolated."""
  text = number(mean) + (f' ± {number(spread)}' if np.isfinite(spread) else '')
  return text + ('*' if interpolated else '')


def markdown(rows):
  """The table, with the note on interpolated values (*) below it if any is."""
  lines = ['| task | method | step | ours: mean ± se | seeds reached | published: mean ± std (seeds) | difference (std) | flag |',
           '|---|---|---:|---:|---:|---:|---:|:---:|']
  for r in rows:
    means = r['task'] == MEAN_ROW
    if r['reached']:
      ours = mean_se(r['mean'], r['se'], r['interpolated'])
    elif not r['seeds']:
      ours = 'no runs'
    else:
      ours = 'no task with a published curve' if means and not r['published_curve'] else 'not reached'
    if not r['published_curve']:
      theirs = 'no published curve'
    elif means and not r['reached']:
      theirs = '-'  # No task where both sides have a value.
    elif np.isfinite(r['published_mean']):
      seeds = f'{r["published_seeds"]} seeds over {r["reached"]} tasks' if means else f'{r["published_seeds"]}'
      theirs = mean_se(r['published_mean'], r['published_std'], r['published_interpolated']) + f' ({seeds})'
    else:
      theirs = 'not reached'
    reached = f'{r["reached"]}/{r["seeds"]}' + (' tasks' if means else '')
    lines.append(f'| {r["task"]} | {r["method"]} | {r["step"]:,.0f} | {ours} | {reached} | {theirs} | '
                 f'{number(r["difference"], 2)} | {"!" if r["flagged"] else ""} |')
  if any(r['interpolated'] or r['published_interpolated'] for r in rows):
    lines += ['', INTERPOLATED + '.']
  return '\n'.join(lines)


def write(rows, out):
  """comparison.csv and comparison.json in `out`; NaN becomes an empty cell / null."""
  out.mkdir(parents=True, exist_ok=True)
  clean = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()} for r in rows]
  with open(out / 'comparison.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, COLUMNS)
    writer.writeheader()
    writer.writerows(clean)
  (out / 'comparison.json').write_text(json.dumps(clean, indent=2, default=float) + '\n')


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('sources', nargs='*', default=['logdir'], help='sweep roots or logdirs, optionally METHOD=PATH')
  parser.add_argument('--steps', nargs='+', type=float, default=list(runs.STEPS), help='env steps to compare at (default: on the published grid)')
  parser.add_argument('--reference', type=pathlib.Path, default=runs.REFERENCE, help='published curves (JSON)')
  parser.add_argument('--y', default='test/return', help='metrics.jsonl key of our score')
  parser.add_argument('--out', type=pathlib.Path, default=pathlib.Path('.'), help='folder for the CSV and JSON')
  args = parser.parse_args(argv)
  if min(args.steps) <= 0:
    parser.error(f'--steps must be positive env steps, got {min(args.steps):g}.')
  try:
    args.ours, args.published = runs.load_all(args.sources, args.reference, args.y)
  except ValueError as e:
    parser.error(str(e))
  return args


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  rows = compare(args.ours, args.published, args.steps)
  write(rows, args.out)  # Before printing: a reader that stops early (`| head`) loses nothing.
  with runs.stdout_may_close():
    print(markdown(rows))
    print(f'\nWrote {args.out / "comparison.csv"} and {args.out / "comparison.json"}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
