"""Turn a sweep root into a folder with REPORT.md: the comparison with the published
curves, the figures, and every run's config, commit, steps reached and wall-clock time.

Usage:
  python scripts/report.py [ROOT | METHOD=PATH ...] [--out report] [--steps 1e5 5e5 1e6 5e6]
      [--bin 1e5] [and the other flags of plotting.py]

Writes into --out: REPORT.md, comparison.csv/.json (compare.py), curves, summary and
aggregate as PNG and PDF with aggregate.json (plotting.py), and configs/ with a copy of
every run's config.json.
"""

import datetime
import json
import pathlib
import shlex
import sys

SCRIPTS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
import compare  # noqa: E402 (a sibling script)
import plotting  # noqa: E402
import runs  # noqa: E402 (plotting put the project root on the path)

# Settings that name a run rather than configure it.
IDENTITY = ('logdir', 'task', 'seed')


def run_rows(ours, out):
  """One dict per run with what the runs table shows; copies configs into out/configs."""
  (out / 'configs').mkdir(parents=True, exist_ok=True)
  rows = []
  for run in sorted(ours, key=lambda r: (r['task'], r['method'], r['seed'])):
    config = runs.read_config(run['logdir'])
    name = f'{run["task"]}_{run["method"]}_{run["seed"]}.json'
    (out / 'configs' / name).write_text(json.dumps(config, indent=2) + '\n')
    seconds, source = runs.wall_clock(run['logdir'])
    rows.append(dict(run, config=config, config_file=f'configs/{name}', steps=runs.env_steps(run['logdir'], config),
                     commit=config.get('commit', 'unknown'), seconds=seconds, clock_source=source))
  return rows


def shared_settings(rows):
  """{key: value} equal in every run's config (identity keys left out)."""
  configs = [r['config'] for r in rows]
  keys = set.intersection(*(set(c) for c in configs)) - set(IDENTITY) if configs else set()
  return {k: configs[0][k] for k in sorted(keys) if all(c[k] == configs[0][k] for c in configs)}


def duration(seconds):
  return '-' if seconds is None else str(datetime.timedelta(seconds=round(seconds)))


def runs_table(rows, shared):
  lines = ['| task | method | seed | env steps / budget | last test return | commit | wall-clock | other settings | config |',
           '|---|---|---:|---:|---:|---|---:|---|---|']
  for r in rows:
    other = ', '.join(f'{k}={v}' for k, v in sorted(r['config'].items()) if k not in shared and k not in IDENTITY)
    last, budget = compare.number(runs.final_score(r)), r['config'].get('steps')
    lines.append(f'| {r["task"]} | {r["method"]} | {r["seed"]} | {r["steps"]:,} / {f"{budget:,}" if budget else "?"} | '
                 f'{last} | {r["commit"]} | {duration(r["seconds"])} ({r["clock_source"]}) | {other or "-"} | '
                 f'[{pathlib.Path(r["config_file"]).name}]({r["config_file"]}) |')
  return '\n'.join(lines)


def aggregate_table(numbers, methods):
  lines = ['| step | tasks | method | mean score / 1000 [95% CI] | IQM [95% CI] |', '|---:|---:|---|---:|---:|']
  for row in numbers['chosen_steps']:
    for method in methods:
      m = row[method]
      lines.append(f'| {row["step"]:,.0f} | {len(row["tasks"])} | {method} | {m["mean"]:.3f} [{m["mean_ci"][0]:.3f}, '
                   f'{m["mean_ci"][1]:.3f}] | {m["iqm"]:.3f} [{m["iqm_ci"][0]:.3f}, {m["iqm_ci"][1]:.3f}] |')
  return '\n'.join(lines)


def report(args, argv):
  out = args.out
  numbers = plotting.plot_all(out, args.ours, args.published, args.baseline_scores, args)
  rows = compare.compare(args.ours, args.published, args.steps)
  compare.write(rows, out)
  run_info = run_rows(args.ours, out)
  shared = shared_settings(run_info)
  methods = list(dict.fromkeys(r['method'] for r in args.ours + args.published))
  text = f"""# Dreamer reproduction report

Made by `{shlex.join(['python', 'scripts/report.py', *argv])}` on
{datetime.date.today().isoformat()} from {len(args.ours)} runs; the published curves are the
authors' ({args.reference.name}, 5 seeds per task), the baselines' final scores from
{args.baselines.name}.

## Test returns against the published curves

Our mean ± standard error over seeds and the published mean ± std over their seeds at
each step, interpolated between evaluations; "difference" is ours minus published in
published stds, flagged (!) beyond {compare.FLAG:g}. A run has not reached a step more than
one evaluation interval after its last evaluation. Also in comparison.csv and .json.

{compare.markdown(rows)}

## Figures

Per-task curves: mean over seeds in bins of {args.bin:g} env steps, band: {args.spread}
over seeds; dashed lines: the baselines' final scores.

![Learning curves per task](curves.png)

Mean final score over tasks (each run's last evaluation, mean over seeds, then tasks),
with the paper's numbers as black marks.

![Mean final score over tasks](summary.png)

Aggregate view (Agarwal et al., NeurIPS 2021): mean and interquartile mean of scores / 1000
over the tasks every method has reached, with 95% stratified bootstrap intervals
({args.reps} resamples, rliable), and the performance profile at the last chosen step.

![Aggregate scores](aggregate.png)

{aggregate_table(numbers, methods)}

## Runs

Wall-clock: the sum of the sweep's recorded attempts in each run's stdout.log (dreamer.py
start to exit, every resume included); for a run the sweep did not start, the span from
the first to the last episode file's timestamp (start-up before the first episode
excluded, pauses between resumes included). Commit: the `commit` of the run's
config.json, "unknown" where it has none.

{runs_table(run_info, shared)}

Settings shared by every run:

```json
{json.dumps(shared, indent=2)}
```
"""
  (out / 'REPORT.md').write_text(text)
  return out / 'REPORT.md'


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = plotting.parse_args(argv, plotting.build_parser(__doc__, out='report'))
  print(f'Wrote {report(args, argv)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
