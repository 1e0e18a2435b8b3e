"""Figures of the paper from our runs and the published ones: per-task curves, the
summary bar chart and the aggregate view (Agarwal et al., NeurIPS 2021).

Usage:
  python scripts/plotting.py [ROOT | METHOD=PATH ...] [--out DIR] [--x step] [--y test/return]
      [--bin 1e5] [--spread std|minmax|ci] [--steps 1e5 5e5 1e6 5e6] [--tasks ...]
      [--reference PATH] [--baselines PATH] [--xmax N] [--reps 2000]

Sources as for compare.py. Each seed's points are averaged within bins of --bin env
steps (seeds log at different steps), then the bins are averaged over seeds; the band
is the sample std over seeds, their min-max, or a 95% percentile-bootstrap interval of
the mean. Writes curves, summary and aggregate as PNG and PDF, and aggregate.json.
"""

import argparse
import json
import pathlib
import sys
import warnings

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402
from rliable import library as rly  # noqa: E402
from rliable import metrics as rly_metrics  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import runs  # noqa: E402 (needs the project root on the path)

COLUMNS, PANEL, DPI = 5, (3.2, 2.6), 100  # Curves: panel size in inches.
LEGEND_HEIGHT = 0.6  # Inches below the panels for the legend.
BASELINES = {'d4pg_100m': 'D4PG (1e8 steps)', 'a3c_100m_proprio': 'A3C (1e8 steps, proprio)',
             'planet_1e6': 'PlaNet (1e6 steps)', 'slac_3e6': 'SLAC (3e6 steps)'}
# Mean final scores over the 20 tasks as the paper reports them (SPEC 9).
PAPER_MEANS = {runs.PUBLISHED: 823, 'd4pg_100m': 786, 'planet_1e6': 332, 'a3c_100m_proprio': 243}


# Statistics.

def binned(run, width):
  """{bin index: mean of the run's points in [index * width, (index + 1) * width)}."""
  index = np.floor(run['xs'] / width).astype(int)
  return {int(i): float(run['ys'][index == i].mean()) for i in np.unique(index)}


def spread(values, kind, seed=0):
  """(mean, low, high) over seeds: mean +- sample std, min-max, or a 95% percentile
  bootstrap interval of the mean. One seed, or equal values, give no band."""
  values = np.asarray(values, float)
  mean = values.mean()
  if len(values) < 2 or np.ptp(values) == 0:
    return mean, mean, mean
  if kind == 'std':
    std = values.std(ddof=1)
    return mean, mean - std, mean + std
  if kind == 'minmax':
    return mean, values.min(), values.max()
  ci = scipy.stats.bootstrap((values,), np.mean, confidence_level=0.95, method='percentile',
                             n_resamples=2000, rng=np.random.default_rng(seed)).confidence_interval
  return mean, ci.low, ci.high


def curve(group, width, kind):
  """Bin centres and (mean, low, high) arrays of one method on one task."""
  bins = [binned(run, width) for run in group]
  indices = sorted(set().union(*bins))
  stats = np.array([spread([b[i] for b in bins if i in b], kind) for i in indices]).reshape(-1, 3)
  return (np.array(indices) + 0.5) * width, stats.T


def score_matrix(groups, method, tasks, step):
  """[runs, tasks] scores / 1000 at `step`, the first n seeds of every task that
  reached it, n the fewest over the tasks (rliable wants a full matrix)."""
  columns = [runs_at(groups.get((method, task), []), step) for task in tasks]
  n = min(len(c) for c in columns)
  return np.array([c[:n] for c in columns]).T / runs.MAX_SCORE


def runs_at(group, step):
  values = [runs.value_at(r['xs'], r['ys'], [step], r.get('until'))[0] for r in group]
  return [v for v in values if np.isfinite(v)]


def common_tasks(groups, methods, step):
  """Tasks where every method has a run that reached `step`."""
  tasks = sorted({task for _, task in groups})
  return [t for t in tasks if all(runs_at(groups.get((m, t), []), step) for m in methods)]


def aggregate(matrices, reps, seed=0):
  """{method: (point [mean, IQM], interval [2, 2])} with 95% stratified bootstrap
  intervals (rliable); rows of a matrix are runs, columns tasks."""
  both = lambda m: np.array([rly_metrics.aggregate_mean(m), rly_metrics.aggregate_iqm(m)])
  with warnings.catch_warnings():  # arch deprecates the RandomState that rliable passes on.
    warnings.simplefilter('ignore', FutureWarning)
    points, intervals = rly.get_interval_estimates(matrices, both, reps=reps, random_state=np.random.RandomState(seed))
  return {k: (points[k], intervals[k]) for k in matrices}


# Figures.

def save(fig, out, name):
  for ext in ('png', 'pdf'):
    fig.savefig(out / f'{name}.{ext}', dpi=DPI)
  plt.close(fig)


def plot_curves(out, groups, methods, tasks, baselines, args):
  cols = min(COLUMNS, len(tasks))
  rows = -(-len(tasks) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(cols * PANEL[0], rows * PANEL[1] + LEGEND_HEIGHT), squeeze=False)
  for ax, task in zip(axes.flat, tasks):
    for color, method in enumerate(methods):
      group = groups.get((method, task))
      if group:
        xs, (mean, low, high) = curve(group, args.bin, args.spread)
        keep = xs <= args.xmax
        ax.plot(xs[keep], mean[keep], color=f'C{color}', label=method)
        ax.fill_between(xs[keep], low[keep], high[keep], color=f'C{color}', alpha=0.2, lw=0)
    for style, (key, label) in enumerate(BASELINES.items()):
      if key in baselines.get(task, {}):
        ax.axhline(baselines[task][key], color=f'C{len(methods) + style}', ls='--', lw=1, label=label)
    missing = [m for m in methods if (m, task) not in groups]
    if missing:
      ax.text(0.5, 0.5, 'no data' if len(missing) == len(methods) else 'no runs: ' + ', '.join(missing),
              transform=ax.transAxes, ha='center', va='center', fontsize=8, color='0.4')
    ax.set_title(task.removeprefix('dmc_'), fontsize=9)
    ax.set_xlim(0, args.xmax)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(tasks):]:
    ax.axis('off')
  handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
  fig.legend(handles.values(), handles.keys(), loc='lower center', ncol=min(len(handles), 6), fontsize=8, frameon=False)
  fig.supxlabel(args.x, fontsize=8, y=LEGEND_HEIGHT / fig.get_figheight())
  fig.subplots_adjust(left=0.06 / cols * 5, right=0.99, top=1 - 0.3 / fig.get_figheight(),
                      bottom=(LEGEND_HEIGHT + 0.45) / fig.get_figheight(), hspace=0.45, wspace=0.3)
  save(fig, out, 'curves')


def summary_scores(groups, methods, baselines):
  """{name: (mean final score over tasks, tasks)}: ours and the published runs from
  each run's last evaluation (mean over seeds, then tasks), the baselines' scores."""
  scores = {}
  for method in methods:
    finals = [np.mean([runs.final_score(r) for r in g]) for (m, _), g in groups.items() if m == method]
    scores[method] = (float(np.mean(finals)), len(finals))
  for key in BASELINES:
    values = [v[key] for v in baselines.values() if key in v]
    if values:
      scores[key] = (float(np.mean(values)), len(values))
  return scores


def plot_summary(out, scores):
  fig, ax = plt.subplots(figsize=(7, 3.5))
  names = list(scores)
  ax.bar(range(len(names)), [scores[n][0] for n in names], color=[f'C{i}' for i in range(len(names))])
  for i, name in enumerate(names):
    ax.text(i, scores[name][0], f'{scores[name][0]:.0f}', ha='center', va='bottom', fontsize=8)
  paper = [i for i, name in enumerate(names) if name in PAPER_MEANS]
  ax.plot(paper, [PAPER_MEANS[names[i]] for i in paper], 'k_', ms=20, mew=2, ls='none', label="paper's number")
  labels = [BASELINES.get(n, n).replace(' (', '\n(') + f'\n{scores[n][1]} tasks' for n in names]
  ax.set_xticks(range(len(names)), labels, fontsize=7)
  ax.set_ylabel('mean final score over tasks', fontsize=8)
  ax.legend(fontsize=8)
  fig.tight_layout()
  save(fig, out, 'summary')


def aggregates_over(groups, methods, steps, reps):
  """[{step, tasks, method: {mean, iqm, mean_ci, iqm_ci}}] at each step with data."""
  rows = []
  for step in steps:
    tasks = common_tasks(groups, methods, step)
    if not tasks:
      continue
    estimates = aggregate({m: score_matrix(groups, m, tasks, step) for m in methods}, reps)
    row = dict(step=float(step), tasks=tasks)
    for method, (point, interval) in estimates.items():
      row[method] = dict(mean=point[0], iqm=point[1], mean_ci=list(interval[:, 0]), iqm_ci=list(interval[:, 1]))
    rows.append(row)
  return rows


def plot_aggregate(out, groups, methods, args):
  grid = np.linspace(args.xmax / 20, args.xmax, 20)
  over, chosen = aggregates_over(groups, methods, grid, args.reps), aggregates_over(groups, methods, args.steps, args.reps)
  fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
  for ax, key in zip(axes[:2], ('mean', 'iqm')):
    for color, method in enumerate(methods):
      xs = [r['step'] for r in over]
      ax.plot(xs, [r[method][key] for r in over], color=f'C{color}', label=method)
      ax.fill_between(xs, *np.array([r[method][key + '_ci'] for r in over]).T.reshape(2, -1), color=f'C{color}', alpha=0.2, lw=0)
    ax.set(title=f'{"IQM" if key == "iqm" else "mean"} of score / 1000 (95% CI)', xlabel=args.x, xlim=(0, args.xmax))
  ax = axes[2]
  for j, row in enumerate(chosen):
    for color, method in enumerate(methods):
      for k, (key, marker) in enumerate((('mean', 's'), ('iqm', 'o'))):
        x = j + 0.3 * (color - (len(methods) - 1) / 2) / len(methods) + 0.12 * k
        low, high = row[method][key + '_ci']
        ax.errorbar(x, row[method][key], [[row[method][key] - low], [high - row[method][key]]], fmt=marker,
                    color=f'C{color}', ms=4, label=f'{method} {key}' if j == 0 else None)
  ax.set_xticks(range(len(chosen)), [f'{r["step"]:.3g}\n({len(r["tasks"])} tasks)' for r in chosen], fontsize=7)
  ax.set(title='at chosen steps (95% CI)', ylabel='score / 1000')
  ax.legend(fontsize=6)
  if chosen:
    plot_profile(axes[3], groups, methods, chosen[-1], args.reps)
  else:
    axes[3].text(0.5, 0.5, 'no chosen step reached by every method', ha='center', va='center', fontsize=8)
  for ax in axes:
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  save(fig, out, 'aggregate')
  return dict(over_steps=over, chosen_steps=chosen)


def plot_profile(ax, groups, methods, row, reps):
  """Fraction of runs above each normalised score at the row's step (rliable)."""
  thresholds = np.linspace(0, 1, 51)
  matrices = {m: score_matrix(groups, m, row['tasks'], row['step']) for m in methods}
  profiles, intervals = rly.create_performance_profile(matrices, thresholds, reps=reps)
  for color, method in enumerate(methods):
    ax.plot(thresholds, profiles[method], color=f'C{color}', label=method)
    ax.fill_between(thresholds, *intervals[method], color=f'C{color}', alpha=0.2, lw=0)
  ax.set(title=f'performance profile at {row["step"]:.3g} steps', xlabel='score / 1000 (tau)', ylabel='fraction of runs > tau')


def plot_all(out, ours, published, baselines, args):
  """Every figure into `out`; returns the aggregate numbers."""
  out.mkdir(parents=True, exist_ok=True)
  ours = [r for r in ours if len(r['xs'])]  # Runs not yet evaluated have nothing to draw.
  groups = runs.group(ours + published)
  methods = list(dict.fromkeys(r['method'] for r in ours + published))
  tasks = args.tasks or sorted({r['task'] for r in ours + published})
  if args.xmax is None:
    args.xmax = max(float(r['xs'][-1]) for r in ours or published)
  plot_curves(out, groups, methods, tasks, baselines, args)
  plot_summary(out, summary_scores(groups, methods, baselines))
  numbers = plot_aggregate(out, groups, methods, args)
  (out / 'aggregate.json').write_text(json.dumps(numbers, indent=2, default=float) + '\n')
  return numbers


def build_parser(description=__doc__, out='figures'):
  """The flags of this script; report.py uses them too."""
  parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('sources', nargs='*', default=['logdir'], help='sweep roots or logdirs, optionally METHOD=PATH')
  parser.add_argument('--out', type=pathlib.Path, default=pathlib.Path(out))
  parser.add_argument('--x', default='step', help='metrics.jsonl key of the x axis')
  parser.add_argument('--y', default='test/return', help='metrics.jsonl key of the score')
  parser.add_argument('--bin', type=float, default=1e5, help='bin width in x units')
  parser.add_argument('--spread', choices=('std', 'minmax', 'ci'), default='std', help='band over seeds')
  parser.add_argument('--steps', nargs='+', type=float, default=list(runs.STEPS), help='steps of the aggregate bars and the table')
  parser.add_argument('--tasks', nargs='+', help='panels (default: every task with data)')
  parser.add_argument('--xmax', type=float, help='x limit (default: the last step of our runs)')
  parser.add_argument('--reps', type=int, default=2000, help='bootstrap resamples')
  parser.add_argument('--reference', type=pathlib.Path, default=runs.REFERENCE, help='published curves (JSON)')
  parser.add_argument('--baselines', type=pathlib.Path, default=runs.BASELINES, help='baseline final scores (JSON)')
  return parser


def parse_args(argv, parser=None):
  """Flags, then our runs, the published runs and the baseline scores, or exit 2."""
  parser = parser or build_parser()
  args = parser.parse_args(argv)
  if args.bin <= 0 or args.reps < 1:
    parser.error(f'--bin and --reps must be positive, got {args.bin:g} and {args.reps}.')
  try:
    args.ours, args.published = runs.load_all(args.sources, args.reference, args.y, args.x)
    args.baseline_scores = runs.load_baselines(args.baselines)
  except (ValueError, OSError) as e:
    parser.error(str(e))
  return args


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  plot_all(args.out, args.ours, args.published, args.baseline_scores, args)
  print(f'Wrote curves, summary and aggregate (.png, .pdf) and aggregate.json into {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
