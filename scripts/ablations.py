"""The paper's ablation studies as dreamer.py commands (SPEC 4 and 10; README,
Variants and ablations).

Usage:
  python scripts/ablations.py --dry-run [--study horizon representation]
      [--root logdir/ablations] [--tasks dmc_cheetah_run ...] [--horizons 10 20]
      [--seeds 3] [-- extra dreamer.py flags]

- horizon: Dreamer, the no-value ablation and PlaNet-style planning at each
  imagination horizon (paper Fig. 4 and Appendix D); methods dreamer_h<H>,
  no_value_h<H>, planet_h<H>.
- representation: reconstruction, contrastive and reward-only world models at the
  default horizon (paper Fig. 8 and Appendix E); methods reconstruction, contrastive,
  reward.

Every run logs to <root>/<task>/<method>/<seed>/, the sweep's layout, with the variant
as the method folder. compare.py, plotting.py and report.py name a run's method by the
folder above its seed folder (runs.find_runs), so given <root>, a folder above it (the
default logdir/, beside the sweep's runs) or one task's folder, they show each variant
as a method of its own. --dry-run prints the commands, one per line; without it they
run one after another (each resumes its own logdir), and the script stops with the
exit code of the first run that fails.
"""

import argparse
import pathlib
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import wrappers  # noqa: E402  (TF-free)

TASKS = tuple(f'dmc_{name}' for name in wrappers.PAPER_TASKS)
HORIZONS = (10, 20, 30, 40)
SEEDS = 3  # The paper's ablation figures average 3 seeds.


def horizon_study(horizons):
  """(method, dreamer.py flags) for each behaviour at each imagination horizon."""
  for horizon in horizons:
    yield f'dreamer_h{horizon}', ['--behavior', 'dreamer', '--horizon', str(horizon)]
    yield f'no_value_h{horizon}', ['--behavior', 'no_value', '--horizon', str(horizon)]
    yield f'planet_h{horizon}', ['--behavior', 'planet', '--planet_horizon', str(horizon)]


def representation_study():
  for objective in ('reconstruction', 'contrastive', 'reward'):
    yield objective, ['--objective', objective]


def commands(studies, root, tasks, horizons, seeds, extra):
  methods = []
  if 'horizon' in studies:
    methods += horizon_study(horizons)
  if 'representation' in studies:
    methods += representation_study()
  for task in tasks:
    for method, flags in methods:
      for seed in range(seeds):
        logdir = pathlib.Path(root) / task / method / str(seed)
        yield [sys.executable, str(ROOT / 'dreamer.py'), '--task', task, '--seed', str(seed),
               '--logdir', str(logdir), *flags, *extra]


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
  parser.add_argument('extra', nargs='*', help='dreamer.py flags for every run, after --')
  parser.add_argument('--study', nargs='+', choices=('horizon', 'representation'), default=['horizon', 'representation'])
  parser.add_argument('--root', default='logdir/ablations', help='logdirs are <root>/<task>/<method>/<seed>')
  parser.add_argument('--tasks', nargs='+', default=TASKS, help='default: the paper\'s 20 DMC tasks')
  parser.add_argument('--horizons', nargs='+', type=int, default=HORIZONS, help='of the horizon study')
  parser.add_argument('--seeds', type=int, default=SEEDS, help='seeds 0 .. N-1 of every run')
  parser.add_argument('--dry-run', action='store_true', help='print the commands instead of running them')
  args = parser.parse_args(argv)
  if args.seeds <= 0 or min(args.horizons) <= 0:
    parser.error('--seeds and --horizons must be positive.')
  for task in args.tasks:
    try:
      wrappers.check_task(task)
    except ValueError as e:
      parser.error(str(e))
  return args


def main(argv):
  args = parse_args(argv)
  for command in commands(args.study, args.root, args.tasks, args.horizons, args.seeds, args.extra):
    print(shlex.join(command), flush=True)
    if not args.dry_run:
      code = subprocess.run(command).returncode
      if code:
        return code
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
