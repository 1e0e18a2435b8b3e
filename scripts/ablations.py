"""The paper's ablation studies as dreamer.py commands (ALGORITHM 4.4 and 3; README,
Variants and ablations).

Usage:
  python scripts/ablations.py --dry-run [--study horizon representation]
      [--root logdir/ablations] [--tasks dmc_cheetah_run ...] [--horizons 10 20]
      [--seeds 3] [-- extra dreamer.py flags]

- horizon: Dreamer, the no-value ablation and PlaNet-style planning at each
  imagination horizon (paper Fig. 4 and Appendix D); methods dreamer_h<H>,
  no_value_h<H>, planet_h<H>; 3 seeds.
- representation: reconstruction, contrastive and reward-only world models at the
  default horizon (paper Fig. 8 and Appendix E); methods reconstruction, contrastive
  (--objective contrastive_tf1: the contrastive loss as the authors' TF1 code, the code
  behind Fig. 8, computes it), reward; 5 seeds.

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
# Partly confirmed: the text extracted from Fig. 4 of the published PDF (arXiv
# 1912.01603v3, page 4) labels the horizon axis 10, 20, 30, 40; whether each study
# point sits on those ticks is not in the text. Appendix D's curves use horizon 20.
HORIZONS = (10, 20, 30, 40)
# Seeds per study. Representation: 5, the final paper's Appendix E figure (its
# Fig. 11 caption; the submission's Fig. 10 had 3). Horizon: 3, the submission's
# Appendix D figure; unconfirmed for the final paper, whose caption we could not read.
SEEDS = dict(horizon=3, representation=5)


def horizon_study(horizons):
  """(method, dreamer.py flags) for each behavior at each imagination horizon."""
  for horizon in horizons:
    yield f'dreamer_h{horizon}', ['--behavior', 'dreamer', '--horizon', str(horizon)]
    yield f'no_value_h{horizon}', ['--behavior', 'no_value', '--horizon', str(horizon)]
    yield f'planet_h{horizon}', ['--behavior', 'planet', '--planet_horizon', str(horizon)]


def representation_study():
  """Fig. 8's methods; its contrastive curves came from the TF1 code's form."""
  for method, objective in (('reconstruction', 'reconstruction'), ('contrastive', 'contrastive_tf1'), ('reward', 'reward')):
    yield method, ['--objective', objective]


def commands(studies, root, tasks, horizons, seeds, extra):
  """`seeds`: the number of seeds of every run, or None for each study's SEEDS."""
  methods = []
  if 'horizon' in studies:
    methods += [(method, flags, 'horizon') for method, flags in horizon_study(horizons)]
  if 'representation' in studies:
    methods += [(method, flags, 'representation') for method, flags in representation_study()]
  for task in tasks:
    for method, flags, study in methods:
      for seed in range(seeds or SEEDS[study]):
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
  parser.add_argument('--seeds', type=int, default=None, help='seeds 0 .. N-1 of every run (default: 3 for the horizon study, 5 for the representation study)')
  parser.add_argument('--dry-run', action='store_true', help='print the commands instead of running them')
  args = parser.parse_args(argv)
  if (args.seeds is not None and args.seeds <= 0) or min(args.horizons) <= 0:
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
