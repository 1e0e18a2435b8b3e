"""Turn a sweep root into a folder with REPORT.md for a paper's appendix: how the runs
were trained (commands, evaluation protocol, settings that differ from the paper's
defaults, machine, libraries, compute), the final scores per task beside the published
curves and the baselines, the comparison table, the figures, and every run's config,
commit, steps reached and wall-clock time.

Usage:
  python scripts/report.py [ROOT | METHOD=PATH ...] [--out report] [--steps 1.05e5 5.05e5 1.005e6 4.905e6]
      [--bin 1e5] [and the other flags of plotting.py]

Writes into --out: REPORT.md, comparison.csv/.json (compare.py), curves, summary and
aggregate as PNG and PDF with aggregate.json (plotting.py), and configs/ with a copy of
every run's config.json. No absolute path of this machine is written (runs.shown_path).
"""

import datetime
import json
import pathlib
import shlex
import sys

import numpy as np

SCRIPTS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
import compare  # noqa: E402 (a sibling script)
import plotting  # noqa: E402
import runs  # noqa: E402 (plotting put the project root on the path)
import configs  # noqa: E402 (TensorFlow-free: the defaults and presets)

# Settings that name a run rather than configure it, and records that are not settings.
IDENTITY = ('logdir', 'task', 'seed', 'mode')
RECORDS = ('commit',)


# Paths without this machine's folders.

def shown_argv(argv):
  """The command line with every absolute path (also in METHOD=PATH) as runs.shown_path shows it."""
  words = []
  for word in argv:
    method, sep, path = word.rpartition('=')
    if path.startswith('/'):
      word = method + sep + runs.shown_path(path)
    words.append(word)
  return words


# Runs and their settings.

def shown_logdir(logdir, sources):
  """Where the report read a run: its source as runs.shown_path shows it, then the
  path below it."""
  for source in sources:
    root = runs.parse_source(source)[1]
    if logdir.is_relative_to(root):
      return str(pathlib.Path(runs.shown_path(root)) / logdir.relative_to(root))
  return runs.shown_path(logdir)


def run_rows(ours, sources, out):
  """One dict per run with what the tables show; copies configs into out/configs,
  with `logdir` where the report read the run (shown_logdir)."""
  (out / 'configs').mkdir(parents=True, exist_ok=True)
  rows = []
  for run in sorted(ours, key=lambda r: (r['task'], r['method'], r['seed'])):
    config = runs.read_config(run['logdir'])
    config['logdir'] = shown_logdir(run['logdir'], sources)
    name = f'{run["task"]}_{run["method"]}_{run["seed"]}.json'
    (out / 'configs' / name).write_text(json.dumps(config, indent=2) + '\n')
    seconds, source = runs.wall_clock(run['logdir'])
    rows.append(dict(run, config=config, config_file=f'configs/{name}', steps=runs.env_steps(run['logdir'], config),
                     commit=config.get('commit', 'unknown'), seconds=seconds, clock_source=source,
                     machine=runs.sweep_machine(run['logdir'])))
  return rows


def shared_settings(rows):
  """{key: value} equal in every run's config (identity keys and records left out)."""
  configs_ = [r['config'] for r in rows]
  keys = set.intersection(*(set(c) for c in configs_)) - set(IDENTITY) - set(RECORDS) if configs_ else set()
  return {k: configs_[0][k] for k in sorted(keys) if all(c[k] == configs_[0][k] for c in configs_)}


def flag_value(value):
  return str(value)  # Booleans as True/False, numbers as Python writes them: dreamer.py reads both.


def dreamer_flags(config):
  """The dreamer.py flags that give `config` with this code: its presets, then
  each setting that differs from the defaults with those presets applied (the
  identity flags left out)."""
  presets = [name for name in config.get('configs', []) if name in configs.PRESETS]
  base = dict(configs.DEFAULTS)
  for name in presets:
    base.update(configs.PRESETS[name])
  flags = ['--configs', *presets] if presets else []
  for key, default in base.items():
    if key not in IDENTITY and key in config and config[key] != default:
      flags += [f'--{key}', flag_value(config[key])]
  return flags


def commands(rows):
  """Markdown lines: per group of runs trained with the same flags, the dreamer.py
  command with TASK and SEED, the tasks and seeds, and the sweep command for it."""
  groups = {}
  for r in rows:
    parts = list(pathlib.PurePath(r['config'].get('logdir', '?')).parts)
    pattern = ['TASK' if p == r['task'] else p for p in parts[:-1]] + (['SEED'] if parts and parts[-1] == r['seed'] else parts[-1:])
    groups.setdefault((tuple(dreamer_flags(r['config'])), str(pathlib.PurePath(*pattern)) if pattern else '?'), []).append(r)
  lines = []
  for (flags, logdir), members in groups.items():
    tasks = sorted({r['task'] for r in members})
    seeds = sorted({r['seed'] for r in members}, key=lambda s: (len(s), s))
    command = shlex.join(['python', 'dreamer.py', *flags]) + ' --task TASK --seed SEED --logdir ' + logdir
    lines += [f'- {len(members)} runs, TASK in {", ".join(tasks)}; SEED in {", ".join(seeds)}:', '',
              f'  ```sh\n  {command}\n  ```', '']
    parts = pathlib.PurePath(logdir).parts
    if len(parts) >= 4 and parts[-3] == 'TASK' and parts[-1] == 'SEED':
      sweep = ['python', 'scripts/sweep.py', '--root', str(pathlib.PurePath(*parts[:-3])), '--method', parts[-2],
               '--tasks', *tasks, '--seeds', *seeds, *flags]
      lines += ['  or, the same runs through the sweep:', '', f'  ```sh\n  {shlex.join(sweep)}\n  ```', '']
  return '\n'.join(lines).rstrip()


def protocol(rows):
  """The evaluation protocol of the runs, one sentence per distinct setting."""
  keys = ('eval_episodes', 'eval_noise', 'eval_every', 'prefill', 'time_limit', 'action_repeat')
  seen = {}
  for r in rows:
    values = tuple(r['config'].get(k, configs.DEFAULTS[k]) for k in keys)
    seen.setdefault(values, []).append(r)
  lines = []
  for (episodes, noise, every, prefill, limit, repeat), members in seen.items():
    noise_text = 'no exploration noise (the actor\'s mode, `eval_noise` 0)' if not noise else f'exploration noise {noise:g} (`eval_noise`)'
    lines.append(f'- {len(members)} runs: each point is the mean return of {episodes} test episode(s) of up to {limit} env '
                 f'steps (action repeat {repeat}) with {noise_text}, in an environment of its own (seed + 1000), run after '
                 f'the training phase at env steps {prefill:,} + k x {every:,}; test episodes are not trained on.')
  lines.append('- Published curves: the authors\' evaluations, one point every 1e5 env steps from 5e3 (reference/README.md).')
  return '\n'.join(lines)


def differing_settings(rows):
  """Markdown table of the settings that differ from the paper's defaults
  (configs.DEFAULTS) in some run: default, and each value with its methods."""
  lines = ['| setting | paper default | here |', '|---|---|---|']
  presets = {}
  for r in rows:
    presets.setdefault(' '.join(r['config'].get('configs', [])) or 'none', []).append(r['method'])
  if set(presets) != {'none'}:
    lines.append(f'| presets (`--configs`) | none | {values_text(presets)} |')
  for key, default in configs.DEFAULTS.items():
    if key in IDENTITY:
      continue
    values = {}
    for r in rows:
      if key in r['config']:
        values.setdefault(flag_value(r['config'][key]), []).append(r['method'])
    if any(v != flag_value(default) for v in values):
      lines.append(f'| `{key}` | {flag_value(default)} | {values_text(values)} |')
  return '\n'.join(lines) if len(lines) > 2 else 'None: every run used the paper\'s defaults.'


def values_text(values):
  """{value: [method of each run]} as 'a (method1, method2); b (method3)', or with
  run counts where a method has several values; just the value if it is the only one."""
  if len(values) == 1:
    return next(iter(values))
  methods = [set(m) for m in values.values()]
  if sum(len(m) for m in methods) == len(set().union(*methods)):
    return '; '.join(f'{v} ({", ".join(sorted(set(m)))})' for v, m in values.items())
  return '; '.join(f'{v} ({len(m)} run{"s" * (len(m) > 1)})' for v, m in values.items())


def machines(rows):
  """Markdown lines: the machines the sweep recorded for the runs, and the
  environment this report was made in."""
  def describe(m):
    gpus = ', '.join(m.get('gpus') or []) or 'no GPU'
    device = f' (run given GPU {m["device"]})' if m.get('device') is not None else ''
    packages = ', '.join(f'{k} {v}' for k, v in m.get('packages', {}).items())
    return f'{m.get("cpu", "unknown CPU")}, {m.get("cores", "?")} logical cores, {gpus}{device}; Python {m.get("python", "?")}, {packages}'
  seen = {}
  for r in rows:
    seen.setdefault(describe(r['machine']) if r['machine'] else None, []).append(r)
  lines = []
  for text, members in seen.items():
    if text is None:
      lines.append(f'- {len(members)} runs: no record (not started by scripts/sweep.py, which records the machine in stdout.log).')
    else:
      lines.append(f'- {len(members)} runs: {text}.')
  lines.append(f'- This report was made with: {describe(runs.machine())}.')
  return '\n'.join(lines)


def compute(rows):
  """One sentence: total and mean wall-clock of the runs."""
  known = [r['seconds'] for r in rows if r['seconds'] is not None]
  if not known:
    return 'Wall-clock time unknown for every run.'
  missing = len(rows) - len(known)
  text = (f'{sum(known) / 3600:.2f} hours of wall-clock over {len(known)} runs (their sum; runs that ran side by '
          f'side count each), {duration(np.mean(known))} per run on average')
  return text + (f'; {missing} runs without a known time.' if missing else '.')


def duration(seconds):
  return '-' if seconds is None else str(datetime.timedelta(seconds=round(seconds)))


def runs_table(rows, shared):
  lines = ['| task | method | seed | env steps / budget | last test return | commit | wall-clock | other settings | config |',
           '|---|---|---:|---:|---:|---|---:|---|---|']
  for r in rows:
    other = ', '.join(f'{k}={v}' for k, v in sorted(r['config'].items())
                      if k not in shared and k not in IDENTITY and k not in RECORDS)
    last, budget = compare.number(runs.final_score(r)), r['config'].get('steps')
    lines.append(f'| {r["task"]} | {r["method"]} | {r["seed"]} | {r["steps"]:,} / {f"{budget:,}" if budget else "?"} | '
                 f'{last} | {r["commit"]} | {duration(r["seconds"])} ({r["clock_source"]}) | {other or "-"} | '
                 f'[{pathlib.Path(r["config_file"]).name}]({r["config_file"]}) |')
  return '\n'.join(lines)


# Scores.

def final_table(ours, published, baselines, step):
  """Markdown table of every task of ours at `step`: each method's mean ± se
  (seeds), the published mean ± std (seeds), and the baselines' final scores."""
  methods = list(dict.fromkeys(r['method'] for r in ours))
  groups, theirs = runs.group(ours), runs.group(published)
  keys = [k for k in plotting.BASELINES if any(k in v for v in baselines.values())]
  header = ['task', *methods, 'published', *(plotting.BASELINES[k] for k in keys)]
  lines = ['| ' + ' | '.join(header) + ' |', '|---|' + '---:|' * (len(header) - 1)]
  for task in sorted({r['task'] for r in ours}):
    cells = [task]
    for m in methods:
      cells.append(score_cell(groups.get((m, task), []), step, 'se') if (m, task) in groups else 'no runs')
    curves = theirs.get((runs.PUBLISHED, task))
    cells.append(score_cell(curves, step, 'std') if curves else 'no published curve')
    cells += [f'{baselines[task][k]:g}' if k in baselines.get(task, {}) else '-' for k in keys]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def score_cell(group, step, spread):
  """'mean ± se (n)' or 'mean ± std (n)' of the runs that reached `step`, * if a
  value is interpolated."""
  ys, exact = compare.values(group, [step])
  done = np.isfinite(ys[:, 0])
  values = ys[done, 0]
  if not len(values):
    return 'not reached'
  std = values.std(ddof=1) if len(values) > 1 else np.nan
  shown_spread = std / np.sqrt(len(values)) if spread == 'se' else std
  return compare.mean_se(values.mean(), shown_spread, not exact[done, 0].all()) + f' ({len(values)})'


def summary_table(summary):
  lines = ['| tasks | bar | mean score | paper\'s mean |', '|---|---|---:|---:|']
  for group in summary['groups']:
    tasks = f'{len(group["tasks"])}: ' + ', '.join(t.removeprefix('dmc_') for t in group['tasks'])
    for b in group['bars']:
      seeds = f' ({plotting.seeds_text(b["seeds"])} per task)' if 'seeds' in b else ''
      paper = '-' if b['paper'] is None else f'{b["paper"]}'
      lines.append(f'| {tasks} | {b["label"]}{seeds} | {b["mean"]:.1f} | {paper} |')
  return '\n'.join(lines)


def aggregate_table(numbers):
  lines = ['| step | tasks | method | seeds per task | mean score / 1000 [95% CI] | IQM [95% CI] |',
           '|---:|---:|---|---:|---:|---:|']
  for row in numbers['chosen_steps']:
    for method in numbers['methods']:
      m = row[method]
      lines.append(f'| {row["step"]:,.0f} | {len(row["tasks"])} | {method} | {plotting.seeds_text(row["seeds"][method])} | '
                   f'{m["mean"]:.3f} [{m["mean_ci"][0]:.3f}, {m["mean_ci"][1]:.3f}] | '
                   f'{m["iqm"]:.3f} [{m["iqm_ci"][0]:.3f}, {m["iqm_ci"][1]:.3f}] |')
  return '\n'.join(lines)


def figures(numbers, args):
  """The figures section, without the figures plot_all did not draw."""
  drawn = plotting.drawn(numbers)
  parts = [f"""Per-task curves: each seed's evaluations averaged in bins of {args.bin:g} env steps, each bin drawn at
the mean step of its evaluations (so every curve sits at the steps it was measured),
then the mean over seeds; band: {args.spread} over seeds; dashed lines: the baselines'
final scores.

![Learning curves per task](curves.png)"""]
  if 'summary' in drawn:
    s = numbers['summary']
    parts.append(f"""Summary: mean score over the same tasks, ours and the published curves at
{s["step"]:,.0f} env steps (mean over the seeds that reached it, then over tasks), each
baseline at its own final step over those of the tasks it reports, beside ours there. A
black mark is the paper's mean where a bar covers the paper's tasks for it (Dreamer: its
20; D4PG, A3C: their 18).

![Mean score over tasks](summary.png)

{summary_table(s)}""")
  else:
    parts.append('No summary figure: at none of the steps did every method reach a DMC task of ours.')
  if 'aggregate' in drawn:
    parts.append(f"""Aggregate view (Agarwal et al., NeurIPS 2021) of scores / 1000 on the DMC tasks every method
reached at each step: the mean over tasks of each task's mean, and the interquartile
mean with every task weighing the same, using every seed (no task is cut down to the
fewest seeds); 95% intervals of a stratified bootstrap over runs ({args.reps} resamples),
and the performance profile at the last chosen step.

![Aggregate scores](aggregate.png)

{aggregate_table(numbers)}""")
  else:
    parts.append('No aggregate figure: no DMC task that every method reached.')
  return '\n\n'.join(parts)


def report(args, argv):
  out = args.out
  numbers = plotting.plot_all(out, args.ours, args.published, args.baseline_scores, args)
  rows = compare.compare(args.ours, args.published, args.steps)
  compare.write(rows, out)
  run_info = run_rows(args.ours, args.sources, out)
  shared = shared_settings(run_info)
  summary = numbers['summary']
  final = max(args.steps) if summary is None else summary['step']
  text = f"""# Dreamer reproduction report

Made by `{shlex.join(['python', 'scripts/report.py', *shown_argv(argv)])}` on
{datetime.date.today().isoformat()} from {len(args.ours)} runs; the published curves are the
authors' ({runs.shown_path(args.reference)}), the baselines' final scores from {runs.shown_path(args.baselines)}.

## How the runs were made

Training commands (flags: the presets, then every setting that differs from the
defaults with those presets; `python dreamer.py --help` lists the rest):

{commands(run_info)}

Evaluation protocol (README, Evaluation):

{protocol(run_info)}

Settings that differ from the paper's defaults (`configs.DEFAULTS`; every other setting
is the paper's):

{differing_settings(run_info)}

Machines and libraries:

{machines(run_info)}

Compute: {compute(run_info)}

## Final scores per task

At {final:,.0f} env steps: ours, mean ± standard error over seeds (seeds that reached
the step); the published curves, mean ± std (their seeds there); the baselines' final
scores after the steps in their names (reference/baselines.json). * marks a value not
measured at that step (interpolated between evaluations); by the rule of runs.py, {runs.REACHED}.

{final_table(args.ours, args.published, args.baseline_scores, final)}

## Test returns against the published curves

Our mean ± standard error over seeds and the published mean ± std over their seeds at
each step, with the number of published seeds there; "difference" is ours minus
published in published stds, flagged (!) beyond {compare.FLAG:g}. Reached: {runs.REACHED}.
Also in comparison.csv and .json.

{compare.markdown(rows)}

## Figures

{figures(numbers, args)}

## Runs

Wall-clock: the sum of the sweep's recorded attempts in each run's stdout.log (dreamer.py
start to exit, every resume included); for a run the sweep did not start, the span from
the first to the last episode file's timestamp (start-up before the first episode
excluded, pauses between resumes included). Commit: the `commit` of the run's
config.json ("+changes": the checkout had uncommitted changes), "unknown" where it has
none. Other settings: those not equal in every run.

{runs_table(run_info, shared)}
"""
  (out / 'REPORT.md').write_text(text)
  return out / 'REPORT.md'


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = plotting.parse_args(argv, plotting.build_parser(__doc__, out='report'))
  path = report(args, argv)
  with runs.stdout_may_close():
    print(f'Wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
