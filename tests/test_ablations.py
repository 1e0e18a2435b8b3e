"""scripts/ablations.py: the grid of the horizon and representation studies."""

import json
import pathlib
import shlex
import subprocess
import sys

import configs
import runs

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'scripts' / 'ablations.py'


def ablations(*flags):
  return subprocess.run([sys.executable, str(SCRIPT), *map(str, flags)], capture_output=True, text=True, timeout=600)


def test_dry_run_prints_every_method_task_and_seed_with_its_flags(tmp_path):
  result = ablations('--dry-run', '--root', tmp_path, '--tasks', 'dmc_cheetah_run', 'dmc_hopper_hop', '--horizons', 5, 30, '--seeds', 2, '--', '--configs', 'debug')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  runs = {}
  for line in lines:
    argv = shlex.split(line)
    assert argv[:2] == [sys.executable, str(ROOT / 'dreamer.py')]
    config = configs.parse_args(argv[2:])  # Valid dreamer.py flags.
    task, method, seed = pathlib.Path(config.logdir).relative_to(tmp_path).parts
    assert (task, int(seed)) == (config.task, config.seed) and config.batch_size == 4  # The debug preset passed on.
    runs[task, method, seed] = config
  methods = ['dreamer_h5', 'no_value_h5', 'planet_h5', 'dreamer_h30', 'no_value_h30', 'planet_h30', 'reconstruction', 'contrastive', 'reward']
  assert len(lines) == len(runs) == 2 * 9 * 2
  assert set(runs) == {(t, m, s) for t in ('dmc_cheetah_run', 'dmc_hopper_hop') for m in methods for s in ('0', '1')}
  debug = 4  # The debug preset's horizon, where a method does not set one.
  expected = dict(
      dreamer_h30=('dreamer', 30, 12, 'reconstruction'), no_value_h30=('no_value', 30, 12, 'reconstruction'),
      planet_h30=('planet', debug, 30, 'reconstruction'), reconstruction=('dreamer', debug, 12, 'reconstruction'),
      contrastive=('dreamer', debug, 12, 'contrastive_tf1'), reward=('dreamer', debug, 12, 'reward'))
  for method, values in expected.items():
    config = runs['dmc_hopper_hop', method, '1']
    assert (config.behavior, config.horizon, config.planet_horizon, config.objective) == values, method


def test_default_grid_is_the_papers_twenty_tasks_four_horizons_three_and_five_seeds():
  result = ablations('--dry-run')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 20 * (3 * 4 * 3 + 3 * 5)  # Horizon study 3 seeds, representation 5.
  assert sum('/dmc_walker_walk/planet_h40/2 ' in line for line in lines) == 1
  assert not any('/dmc_walker_walk/planet_h40/3 ' in line for line in lines)
  assert sum('/dmc_acrobot_swingup/contrastive/4 ' in line for line in lines) == 1


def test_running_stops_at_the_first_failing_run_with_its_exit_code(tmp_path):
  result = ablations('--root', tmp_path, '--tasks', 'dmc_cheetah_run', '--study', 'representation', '--seeds', 1, '--', '--batch_size', 0)
  assert result.returncode == 2
  assert len(result.stdout.splitlines()) == 1  # The first command ran and failed; no second one.
  assert '--batch_size must be positive' in result.stderr


def test_unknown_task_is_an_error_with_exit_code_2():
  result = ablations('--dry-run', '--tasks', 'dmc_walker_fly')
  assert result.returncode == 2 and 'dmc_walker_walk' in result.stderr and not result.stdout


def test_each_variant_is_a_method_of_its_own_read_from_the_root_or_any_folder_around_it(tmp_path):
  root = tmp_path / 'logdir' / 'ablations'
  result = ablations('--dry-run', '--root', root, '--tasks', 'dmc_cheetah_run', '--horizons', 10, '--seeds', 2)
  assert result.returncode == 0, result.stderr
  for line in result.stdout.splitlines():
    config = configs.parse_args(shlex.split(line)[2:])  # Creates the logdir, as dreamer.py does.
    logdir = pathlib.Path(config.logdir)
    (logdir / 'config.json').write_text(json.dumps(dict(task=config.task, seed=config.seed)))
    (logdir / 'metrics.jsonl').write_text(json.dumps({'step': 5000, 'test/return': 1.0}) + '\n')
  main = tmp_path / 'logdir' / 'dmc_cheetah_run' / 'dreamer' / '0'  # A sweep's run beside them.
  main.mkdir(parents=True)
  (main / 'config.json').write_text(json.dumps(dict(task='dmc_cheetah_run', seed=0)))
  (main / 'metrics.jsonl').write_text(json.dumps({'step': 5000, 'test/return': 1.0}) + '\n')
  variants = {'dreamer_h10', 'no_value_h10', 'planet_h10', 'reconstruction', 'contrastive', 'reward'}
  for source, extra in ((tmp_path / 'logdir', {'dreamer'}), (root, set()), (root / 'dmc_cheetah_run', set())):
    found = runs.find_runs([str(source)])
    seeds = {}
    for run in found:
      assert run['task'] == 'dmc_cheetah_run'
      seeds.setdefault(run['method'], set()).add(run['seed'])
    assert set(seeds) == variants | extra, source
    assert all(seeds[m] == {'0', '1'} for m in variants)
