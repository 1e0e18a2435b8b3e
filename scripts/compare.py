"""Our test returns beside the published Dreamer curves at chosen env steps, per task.

Usage:
  python scripts/compare.py [ROOT | METHOD=PATH ...] [--steps 1e5 5e5 1e6 5e6]
      [--reference PATH] [--y test/return] [--out DIR]

Each source is a sweep root (<root>/<task>/<method>/<seed>/) or a single logdir; a
METHOD= prefix names its method, so two logdirs of one task compare in one table. For
every task and step: our mean and standard error over seeds (sample std / sqrt(n)), the
published 5-seed mean and sample std, and the difference in units of that std,
flagged (!) beyond 2. Curves are interpolated between logged evaluations; a run has
"not reached" a step more than one evaluation interval past its last one
(runs.value_at). The last rows average over the tasks where both sides have a value.
Prints a Markdown table; writes comparison.csv and comparison.json into --out.
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
COLUMNS = ('task', 'method', 'step', 'mean', 'se', 'reached', 'seeds', 'published_mean', 'published_std',
           'published_seeds', 'difference', 'flagged')


def values(group, steps):
  """[seeds, steps] of every run's curve at `steps`, NaN where not reached."""
  return np.array([runs.value_at(r['xs'], r['ys'], steps, r.get('until')) for r in group]).reshape(len(group), len(steps))


def row(task, method, step, ours, published):
  """One comparison from our seeds' and the published seeds' values at one step."""
  ours, published = ours[np.isfinite(ours)], published[np.isfinite(published)]
  mean = ours.mean() if len(ours) else np.nan
  se = ours.std(ddof=1) / np.sqrt(len(ours)) if len(ours) > 1 else np.nan
  pub_mean = published.mean() if len(published) else np.nan
  pub_std = published.std(ddof=1) if len(published) > 1 else np.nan
  difference = (mean - pub_mean) / pub_std if pub_std > 0 else np.nan
  return dict(task=task, method=method, step=step, mean=mean, se=se, reached=len(ours), published_mean=pub_mean,
              published_std=pub_std, published_seeds=len(published), difference=difference,
              flagged=bool(abs(difference) > FLAG))


def mean_row(method, step, rows):
  """Means over the tasks where ours and the published curve have a value."""
  both = [r for r in rows if np.isfinite(r['mean']) and np.isfinite(r['published_mean'])]
  average = lambda key: float(np.nanmean([r[key] for r in both])) if both else np.nan
  difference = average('difference') if any(np.isfinite(r['difference']) for r in both) else np.nan
  return dict(task=MEAN_ROW, method=method, step=step, mean=average('mean'), se=np.nan, reached=len(both),
              seeds=len(rows), published_mean=average('published_mean'), published_std=np.nan,
              published_seeds=len(both), difference=difference, flagged=False)


def compare(ours, reference, steps):
  """Rows for every task of ours x method x step, then the means over tasks. In a
  mean row `reached` and `published_seeds` count tasks, `seeds` all tasks."""
  groups, published = runs.group(ours), runs.group(reference)
  methods = list(dict.fromkeys(r['method'] for r in ours))
  rows = []
  for task in sorted({r['task'] for r in ours}):
    theirs = values(published.get((runs.PUBLISHED, task), []), steps)
    for method in methods:
      group = groups.get((method, task), [])
      mine = values(group, steps)
      for i, step in enumerate(steps):
        rows.append(dict(row(task, method, step, mine[:, i], theirs[:, i]), seeds=len(group)))
  for method in methods:
    for step in steps:
      rows.append(mean_row(method, step, [r for r in rows if r['method'] == method and r['step'] == step]))
  return rows


def number(value, digits=1):
  return '-' if not np.isfinite(value) else f'{value:.{digits}f}'


def markdown(rows):
  lines = ['| task | method | step | ours: mean ± se | seeds reached | published: mean ± std | difference (std) | flag |',
           '|---|---|---:|---:|---:|---:|---:|:---:|']
  for r in rows:
    if r['reached']:
      ours = number(r['mean']) + (f' ± {number(r["se"])}' if np.isfinite(r['se']) else '')
    else:
      ours = 'not reached' if r['seeds'] else 'no runs'
    if np.isfinite(r['published_mean']):
      theirs = number(r['published_mean']) + (f' ± {number(r["published_std"])}' if np.isfinite(r['published_std']) else '')
    else:
      theirs = '-'
    reached = f'{r["reached"]}/{r["seeds"]}' + (' tasks' if r['task'] == MEAN_ROW else '')
    lines.append(f'| {r["task"]} | {r["method"]} | {r["step"]:,.0f} | {ours} | {reached} | {theirs} | '
                 f'{number(r["difference"], 2)} | {"!" if r["flagged"] else ""} |')
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
  parser.add_argument('--steps', nargs='+', type=float, default=list(runs.STEPS), help='env steps to compare at')
  parser.add_argument('--reference', type=pathlib.Path, default=runs.REFERENCE, help='published curves (JSON)')
  parser.add_argument('--y', default='test/return', help='metrics.jsonl key of our score')
  parser.add_argument('--out', type=pathlib.Path, default=pathlib.Path('.'), help='folder for the CSV and JSON')
  args = parser.parse_args(argv)
  try:
    args.ours, args.published = runs.load_all(args.sources, args.reference, args.y)
  except ValueError as e:
    parser.error(str(e))
  return args


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  rows = compare(args.ours, args.published, args.steps)
  print(markdown(rows))
  write(rows, args.out)
  print(f'\nWrote {args.out / "comparison.csv"} and {args.out / "comparison.json"}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
