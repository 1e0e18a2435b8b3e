"""Figures of the paper from our runs and the published ones: per-task curves, the
summary bar chart and the aggregate view (Agarwal et al., NeurIPS 2021).

Usage:
  python scripts/plotting.py [ROOT | METHOD=PATH ...] [--out DIR] [--x step] [--y test/return]
      [--bin 1e5] [--spread std|minmax|ci] [--steps 1.05e5 5.05e5 1.005e6 4.905e6] [--tasks ...]
      [--reference PATH] [--baselines PATH] [--xmax N] [--reps 2000]

Sources as for compare.py. Curves: each seed's evaluations are averaged within bins of
--bin env steps, and each bin is drawn at the mean step of the evaluations in it (not
at the bin's centre), then averaged over seeds; so the published curve, one point per
1e5 steps at 5e3 + k x 1e5, stays at the steps it was measured. The band is the sample
std over seeds, their min-max, or a 95% percentile-bootstrap interval of the mean.
Summary bars and the aggregate view compare like with like: every method at the same
env step over the same DMC tasks (runs.py, "Reached"), each baseline only over the
tasks it reports. Writes curves, summary and aggregate as PNG and PDF, and
aggregate.json with the numbers of the summary and aggregate figures.
"""

import argparse
import json
import pathlib
import sys

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import runs  # noqa: E402 (needs the project root on the path)

COLUMNS, PANEL, DPI = 5, (3.2, 2.6), 100  # Curves: panel size in inches.
BASELINES = {'d4pg_100m': 'D4PG (1e8 steps)', 'a3c_100m_proprio': 'A3C (1e8 steps, proprio)',
             'planet_1e6': 'PlaNet (1e6 steps)', 'slac_3e6': 'SLAC (3e6 steps)'}
# Means over tasks as the paper reports them: Dreamer over its 20 tasks (all of the
# published curves' tasks), D4PG and A3C over the 18 of baselines.json (the means of
# their scores there). The paper's PlaNet mean (332) is at 5e6 steps, unlike the
# PlaNet scores at 1e6 in baselines.json, so it marks no bar.
PAPER_MEANS = {runs.PUBLISHED: 823, 'd4pg_100m': 786, 'a3c_100m_proprio': 243}
LABELS = {'step': 'env steps', 'test/return': 'test return'}


# Statistics.

def binned(run, width):
  """{bin index: (mean step, mean value) of the run's points in [index * width,
  (index + 1) * width)}."""
  index = np.floor(run['xs'] / width).astype(int)
  return {int(i): (float(run['xs'][index == i].mean()), float(run['ys'][index == i].mean())) for i in np.unique(index)}


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
  """Steps and (mean, low, high) arrays of one method on one task: per bin, the
  mean over seeds of each seed's mean step and mean value in the bin."""
  bins = [binned(run, width) for run in group]
  indices = sorted(set().union(*bins))
  xs = np.array([np.mean([b[i][0] for b in bins if i in b]) for i in indices])
  stats = np.array([spread([b[i][1] for b in bins if i in b], kind) for i in indices]).reshape(-1, 3)
  return xs, stats.T


def scores_at(group, step):
  """The values at `step` of the runs that reached it."""
  values = [runs.value_at(r['xs'], r['ys'], [step])[0] for r in group]
  return np.array([v for v in values if np.isfinite(v)])


def compared(groups, ours, tasks):
  """Our methods, and the published curves if they cover one of `tasks`."""
  return ours + ([runs.PUBLISHED] if any((runs.PUBLISHED, t) in groups for t in tasks) else [])


def common_tasks(groups, methods, tasks, step):
  """Those of `tasks` where every method has a run that reached `step`."""
  return [t for t in tasks if all(len(scores_at(groups.get((m, t), []), step)) for m in methods)]


def iqm(columns):
  """Interquartile mean of the scores of all tasks, every task weighing the same
  (each of its n scores 1 / n): the mean of the middle half of that distribution.
  With equal seed counts per task (and a multiple of 4 scores), rliable's IQM."""
  scores = np.concatenate(columns)
  weights = np.concatenate([np.full(len(c), 1 / len(c)) for c in columns]) / len(columns)
  order = np.argsort(scores, kind='stable')
  scores, weights = scores[order], weights[order]
  upper = np.cumsum(weights)
  inside = np.clip(np.minimum(upper, 0.75) - np.maximum(upper - weights, 0.25), 0, None)
  return float(np.sum(inside * scores) / 0.5)


def profile(columns, thresholds):
  """Fraction of runs above each threshold, averaged over tasks."""
  return np.mean([(np.asarray(c)[:, None] > thresholds).mean(0) for c in columns], 0)


def resamples(columns, reps, rng):
  """`reps` stratified bootstrap resamples: each task's runs drawn with replacement."""
  draws = [np.asarray(c)[rng.integers(0, len(c), (reps, len(c)))] for c in columns]
  return [[d[r] for d in draws] for r in range(reps)]


def aggregate(columns, reps, seed=0):
  """{method: (point [mean, IQM], interval [2, 2])} of per-task score lists (any
  number of runs per task, all of them used): mean over tasks of the task means, and
  iqm(), with 95% percentile intervals of a stratified bootstrap over runs."""
  rng = np.random.default_rng(seed)
  both = lambda c: np.array([np.mean([np.mean(x) for x in c]), iqm(c)])
  result = {}
  for method, c in columns.items():
    samples = np.array([both(s) for s in resamples(c, reps, rng)])
    result[method] = (both(c), np.percentile(samples, [2.5, 97.5], axis=0))
  return result


def dmc_tasks(tasks):
  """The tasks whose returns are on DMC's 0-1000 scale (summary and aggregate)."""
  return [t for t in tasks if t.startswith('dmc_')]


# Figures.

def save(fig, out, name):
  for ext in ('png', 'pdf'):
    fig.savefig(out / f'{name}.{ext}', dpi=DPI)
  plt.close(fig)


def label(key):
  return LABELS.get(key, key)


def bottom_legend(fig, handles, labels):
  """A legend under the panels in as many columns (up to 6) as the figure's width
  holds; its height in inches."""
  renderer = fig.canvas.get_renderer()
  for ncol in range(min(len(labels), 6), 0, -1):
    legend = fig.legend(handles, labels, loc='lower center', ncol=ncol, fontsize=8, frameon=False,
                        bbox_to_anchor=(0.5, 0))
    box = legend.get_window_extent(renderer)
    if box.width <= 0.98 * fig.bbox.width or ncol == 1:
      return box.height / fig.dpi
    legend.remove()
  return 0.0


def curves_figure(groups, methods, ours, tasks, baselines, colors, args):
  """One panel per task: every method's binned curve and band, the baselines as
  dashed lines, a note where a method has no runs or the task no published curve."""
  cols = min(COLUMNS, len(tasks))
  rows = -(-len(tasks) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(cols * PANEL[0], rows * PANEL[1]), squeeze=False)
  for ax, task in zip(axes.flat, tasks):
    for method in methods:
      group = groups.get((method, task))
      if group:
        xs, (mean, low, high) = curve(group, args.bin, args.spread)
        keep = xs <= args.xmax
        ax.plot(xs[keep], mean[keep], 'o-', ms=2, color=colors[method], label=method)
        ax.fill_between(xs[keep], low[keep], high[keep], color=colors[method], alpha=0.2, lw=0)
    for key, name in BASELINES.items():
      if key in baselines.get(task, {}):
        ax.axhline(baselines[task][key], color=colors[key], ls='--', lw=1, label=name)
    notes = []
    missing = [m for m in ours if (m, task) not in groups]
    if missing:
      notes.append('no runs: ' + ', '.join(missing))
    if (runs.PUBLISHED, task) not in groups:
      notes.append('no published curve')
    if notes:
      ax.text(0.5, 0.5, '\n'.join(notes), transform=ax.transAxes, ha='center', va='center', fontsize=8, color='0.4')
    ax.set_title(task.removeprefix('dmc_'), fontsize=9)
    ax.set_xlim(0, args.xmax)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  for ax in axes[:, 0]:
    ax.set_ylabel(label(args.y), fontsize=8)
  for ax in axes.flat[len(tasks):]:
    ax.axis('off')
  handles = {name: h for ax in axes.flat for h, name in zip(*ax.get_legend_handles_labels())}
  order = methods + list(BASELINES.values())
  handles = dict(sorted(handles.items(), key=lambda item: order.index(item[0])))
  legend = bottom_legend(fig, list(handles.values()), list(handles)) if handles else 0.0
  xlabel, top = 0.35, 0.3  # Inches for the x label above the legend, and above the titles.
  height = rows * PANEL[1] + legend + xlabel
  fig.set_size_inches(cols * PANEL[0], height)
  fig.supxlabel(label(args.x), fontsize=8, y=(legend + 0.05) / height, va='bottom')
  fig.subplots_adjust(left=0.5 / fig.get_figwidth(), right=1 - 0.1 / fig.get_figwidth(), top=1 - top / height,
                      bottom=(legend + xlabel + 0.35) / height, hspace=0.55, wspace=0.3)
  return fig


def summary_scores(groups, ours, baselines, steps):
  """The summary bars: every method at the same env step over the same tasks. The
  step is the last of `steps` where our methods (and the published curves, where
  they cover our tasks) share a DMC task they all reached. Bar groups: all those
  tasks; then, for each baseline, those of them it reports, with its score beside
  ours there (baselines at their own final step, in their label). A paper mark
  stands beside a bar whose tasks are those of the paper's mean. None if no step
  has a shared task."""
  tasks = dmc_tasks(sorted({task for method, task in groups if method in ours}))
  methods = compared(groups, ours, tasks)
  step, shared = next(((s, common_tasks(groups, methods, tasks, s)) for s in sorted(steps, reverse=True)
                       if common_tasks(groups, methods, tasks, s)), (None, []))
  if step is None:
    return None
  paper_tasks = {runs.PUBLISHED: sorted(t for m, t in groups if m == runs.PUBLISHED)}
  paper_tasks.update({k: sorted(t for t, v in baselines.items() if k in v) for k in BASELINES})

  def bar(name, values, over):
    paper = PAPER_MEANS.get(name) if over == paper_tasks.get(name) else None
    return dict(name=name, label=BASELINES.get(name, name), mean=float(np.mean(values)), paper=paper)

  def dreamer_bars(over):
    bars = []
    for m in methods:
      per_task = [scores_at(groups[m, t], step) for t in over]
      bars.append(dict(bar(m, [v.mean() for v in per_task], over), seeds=[len(v) for v in per_task]))
    return bars

  bar_groups = {tuple(shared): dreamer_bars(shared)}
  for key in BASELINES:
    over = [t for t in shared if key in baselines.get(t, {})]
    if over:
      bar_groups.setdefault(tuple(over), dreamer_bars(over)).append(bar(key, [baselines[t][key] for t in over], over))
  left_out = [BASELINES[k] for k in BASELINES if not any(k in baselines.get(t, {}) for t in shared)]
  return dict(step=float(step), tasks=shared, groups=[dict(tasks=list(t), bars=b) for t, b in bar_groups.items()],
              left_out=left_out)


def plot_summary(out, summary, colors):
  """Grouped bars of summary_scores, each group's tasks named below it."""
  bars = [(g, b) for g, group in enumerate(summary['groups']) for b in group['bars']]
  xs = np.arange(len(bars)) + np.array([g for g, _ in bars]) * 0.6  # A gap between groups.
  fig, ax = plt.subplots(figsize=(max(7.0, 0.75 * len(xs) + 1.5), 3.8))
  for x, (_, b) in zip(xs, bars):
    ax.bar(x, b['mean'], color=colors[b['name']])
    ax.text(x, b['mean'], f'{b["mean"]:.0f}', ha='center', va='bottom', fontsize=7)
    if b['paper'] is not None:
      ax.plot(x, b['paper'], 'k_', ms=18, mew=2, label="paper's mean" if "paper's mean" not in ax.get_legend_handles_labels()[1] else None)
  ax.set_xticks(xs, [b['label'].replace(' (', '\n(') for _, b in bars], fontsize=6)
  for g, group in enumerate(summary['groups']):
    centre = xs[[i for i, (h, _) in enumerate(bars) if h == g]].mean()
    ax.annotate(f'{len(group["tasks"])} tasks', (centre, 0), xytext=(0, -34), textcoords='offset points',
                xycoords=('data', 'axes fraction'), ha='center', va='top', fontsize=7, color='0.3')
  ax.set_ylabel('mean score over the tasks', fontsize=8)
  note = f'Dreamer curves at {summary["step"]:,.0f} env steps; baselines at their final step'
  if summary['left_out']:
    note += f'\nnot on these tasks: {", ".join(summary["left_out"])}'
  ax.set_title(note, fontsize=8)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  ax.tick_params(axis='y', labelsize=7)
  fig.tight_layout()
  save(fig, out, 'summary')


def aggregates_over(groups, methods, tasks, steps, reps):
  """[{step, tasks, seeds, method: {mean, iqm, mean_ci, iqm_ci}}] at each step
  where some task was reached by every method; seeds: {method: runs per task}."""
  rows = []
  for step in steps:
    shared = common_tasks(groups, methods, tasks, step)
    if not shared:
      continue
    columns = {m: [scores_at(groups[m, t], step) / runs.MAX_SCORE for t in shared] for m in methods}
    row = dict(step=float(step), tasks=shared, seeds={m: [len(c) for c in columns[m]] for m in methods})
    for method, (point, interval) in aggregate(columns, reps).items():
      row[method] = dict(mean=point[0], iqm=point[1], mean_ci=list(interval[:, 0]), iqm_ci=list(interval[:, 1]))
    rows.append(row)
  return rows


def seeds_text(counts):
  low, high = min(counts), max(counts)
  return f'{low} seeds' if low == high else f'{low}-{high} seeds'


def plot_aggregate(out, groups, methods, tasks, colors, args):
  """The aggregate figure (panels only for what has data); its numbers."""
  grid = np.linspace(args.xmax / 20, args.xmax, 20)
  over = aggregates_over(groups, methods, tasks, grid, args.reps)
  chosen = aggregates_over(groups, methods, tasks, args.steps, args.reps)
  numbers = dict(methods=methods, over_steps=over, chosen_steps=chosen)
  if not over and not chosen:
    return numbers
  panels = (2 if over else 0) + (2 if chosen else 0)
  fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.8), squeeze=False)
  axes = list(axes.flat)
  if over:
    for ax, key in zip(axes[:2], ('mean', 'iqm')):
      for method in methods:
        xs = [r['step'] for r in over]
        ax.plot(xs, [r[method][key] for r in over], 'o-', ms=2, color=colors[method], label=method)
        ax.fill_between(xs, *np.array([r[method][key + '_ci'] for r in over]).T, color=colors[method], alpha=0.2, lw=0)
      ax.set(title=f'{"IQM" if key == "iqm" else "mean"} of score / 1000 (95% CI)\nover the tasks all reached',
             xlabel=label(args.x), ylabel='score / 1000', xlim=(0, args.xmax))
      ax.legend(fontsize=7)
    axes = axes[2:]
  if chosen:
    ax = axes[0]
    for j, row in enumerate(chosen):
      for c, method in enumerate(methods):
        for k, (key, marker) in enumerate((('mean', 's'), ('iqm', 'o'))):
          x = j + 0.3 * (c - (len(methods) - 1) / 2) / len(methods) + 0.12 * k
          low, high = row[method][key + '_ci']
          ax.errorbar(x, row[method][key], [[row[method][key] - low], [high - row[method][key]]], fmt=marker,
                      color=colors[method], ms=4, label=f'{method} {key}' if j == 0 else None)
    ticks = [f'{r["step"]:.4g}\n({len(r["tasks"])} tasks,\n'
             f'{seeds_text([n for m in methods for n in r["seeds"][m]])})' for r in chosen]
    ax.set_xticks(range(len(chosen)), ticks, fontsize=6)
    ax.set(title='at chosen steps (95% CI)', ylabel='score / 1000')
    ax.legend(fontsize=6)
    plot_profile(axes[1], groups, methods, chosen[-1], colors, args.reps)
  for ax in fig.axes:
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  save(fig, out, 'aggregate')
  return numbers


def plot_profile(ax, groups, methods, row, colors, reps):
  """Fraction of runs above each normalised score at the row's step, every task
  weighing the same, with a 95% stratified bootstrap band."""
  thresholds = np.linspace(0, 1, 51)
  rng = np.random.default_rng(0)
  for method in methods:
    columns = [scores_at(groups[method, t], row['step']) / runs.MAX_SCORE for t in row['tasks']]
    samples = np.array([profile(s, thresholds) for s in resamples(columns, reps, rng)])
    ax.plot(thresholds, profile(columns, thresholds), color=colors[method], label=method)
    ax.fill_between(thresholds, *np.percentile(samples, [2.5, 97.5], axis=0), color=colors[method], alpha=0.2, lw=0)
  ax.set(title=f'performance profile at {row["step"]:.4g} steps', xlabel='score / 1000 (tau)', ylabel='fraction of runs > tau')
  ax.legend(fontsize=7)


def plot_all(out, ours, published, baselines, args):
  """Every figure into `out` (a figure without data is not drawn, and its old files
  are removed); returns the numbers of the summary and aggregate figures."""
  out.mkdir(parents=True, exist_ok=True)
  ours = [r for r in ours if len(r['xs'])]  # Runs not yet evaluated have nothing to draw.
  groups = runs.group(ours + published)
  mine = list(dict.fromkeys(r['method'] for r in ours))
  methods = mine + [runs.PUBLISHED]
  colors = {m: f'C{i}' for i, m in enumerate(methods + list(BASELINES))}
  tasks = args.tasks or sorted({r['task'] for r in ours} or {r['task'] for r in published})
  if args.xmax is None:
    args.xmax = max(float(r['xs'][-1]) for r in ours or published)
  save(curves_figure(groups, methods, mine, tasks, baselines, colors, args), out, 'curves')
  ours_dmc = dmc_tasks(sorted({r['task'] for r in ours}))
  summary = summary_scores(groups, mine, baselines, args.steps)
  numbers = plot_aggregate(out, groups, compared(groups, mine, ours_dmc), ours_dmc, colors, args)
  numbers['summary'] = summary
  if summary:
    plot_summary(out, summary, colors)
  for name in {'summary', 'aggregate'} - set(drawn(numbers)):
    for ext in ('png', 'pdf'):
      (out / f'{name}.{ext}').unlink(missing_ok=True)
  (out / 'aggregate.json').write_text(json.dumps(numbers, indent=2, default=float) + '\n')
  return numbers


def drawn(numbers):
  """The figures plot_all drew, by the numbers it returned."""
  return ['curves'] + ['summary'] * bool(numbers['summary']) + ['aggregate'] * bool(numbers['chosen_steps'] or numbers['over_steps'])


def build_parser(description=__doc__, out='figures'):
  """The flags of this script; report.py uses them too."""
  parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('sources', nargs='*', default=['logdir'], help='sweep roots or logdirs, optionally METHOD=PATH')
  parser.add_argument('--out', type=pathlib.Path, default=pathlib.Path(out))
  parser.add_argument('--x', default='step', help='metrics.jsonl key of the x axis')
  parser.add_argument('--y', default='test/return', help='metrics.jsonl key of the score')
  parser.add_argument('--bin', type=float, default=1e5, help='bin width in x units')
  parser.add_argument('--spread', choices=('std', 'minmax', 'ci'), default='std', help='band over seeds')
  parser.add_argument('--steps', nargs='+', type=float, default=list(runs.STEPS),
                      help='steps of the summary, the aggregate bars and the table (default: on the published grid)')
  parser.add_argument('--tasks', nargs='+', help='panels (default: every task of our runs)')
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
  if min(args.steps) <= 0:
    parser.error(f'--steps must be positive env steps, got {min(args.steps):g}.')
  try:
    args.ours, args.published = runs.load_all(args.sources, args.reference, args.y, args.x)
    args.baseline_scores = runs.load_baselines(args.baselines)
  except ValueError as e:
    parser.error(str(e))
  known = sorted({r['task'] for r in args.ours + args.published})
  unknown = [t for t in args.tasks or [] if t not in known]
  if unknown:
    parser.error(f'--tasks: no runs and no published curve for {", ".join(unknown)}; known tasks: {", ".join(known)}.')
  return args


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  numbers = plot_all(args.out, args.ours, args.published, args.baseline_scores, args)
  figures = drawn(numbers)
  with runs.stdout_may_close():
    print(f'Wrote {", ".join(figures)} (.png, .pdf) and aggregate.json into {args.out}')
    for name in ('summary', 'aggregate'):
      if name not in figures:
        print(f'No {name} figure: no DMC task of ours that every method reached at the steps it uses.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
