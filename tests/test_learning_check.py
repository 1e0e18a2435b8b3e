"""scripts/learning_check.py: interpolation of the published curves, verdict, exit
codes, outputs, and one real seconds-long run."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'scripts' / 'learning_check.py'

# Three seeds of cartpole_balance (random score 135), one with other xs, and a task
# without a known random score. Hand-computed published values at our steps (seeds,
# and whether some value is interpolated, i.e. not measured at the step):
#   step  5 (before the first x): seeds 100, 200,   0 -> mean 100, min   0, max 200 (3, interpolated)
#   step 15:                      seeds 150, 300, 150 -> mean 200, min 150, max 300 (3, interpolated)
#   step 30:                      seeds 300, 600, 600 -> mean 500, min 300, max 600 (3, measured)
#   step 40 (after the last x):   no seed reached it -> no published value (0)
REFERENCE = [
    dict(task='dmc_cartpole_balance', method='dreamer', seed='0', xs=[10, 20, 30], ys=[100, 200, 300]),
    dict(task='dmc_cartpole_balance', method='dreamer', seed='1', xs=[10, 20, 30], ys=[200, 400, 600]),
    dict(task='dmc_cartpole_balance', method='dreamer', seed='2', xs=[10, 30], ys=[0, 600]),
    dict(task='dmc_walker_walk', method='dreamer', seed='0', xs=[10, 30], ys=[1000, 1000]),
]
EXPECTED = {5: (100, 0, 200, 3, True), 15: (200, 150, 300, 3, True), 30: (500, 300, 600, 3, False),
            40: (None, None, None, 0, False)}


def load_module():
  spec = importlib.util.spec_from_file_location('learning_check', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def check(*flags, timeout=60):
  return subprocess.run([sys.executable, str(SCRIPT), *map(str, flags)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def reference(tmp_path):
  path = tmp_path / 'curves.json'
  path.write_text(json.dumps(REFERENCE))
  return path


def fake_logdir(path, points, extra_rows=()):
  path.mkdir(parents=True, exist_ok=True)
  rows = [{'step': s, 'test/return': r, 'test/length': 1000} for s, r in points] + list(extra_rows)
  (path / 'metrics.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in rows))
  return path


def test_interpolated_published_mean_min_max_match_hand_computed_values_and_outputs_are_written(tmp_path, reference):
  # Step 15 is logged twice (the last value wins); train-only rows are ignored.
  logdir = fake_logdir(tmp_path / 'run', [(5, 50.0), (15, 1.0), (15, 160.0), (40, 20.0), (30, 301.0)],
                       extra_rows=[{'step': 20, 'train/return': 999.0}])
  result = check('--task', 'dmc_cartpole_balance', '--logdir', logdir, '--reference', reference, '--no-train')
  assert result.returncode == 0, result.stdout + result.stderr  # See the verdict below.
  report = json.loads((logdir / 'learning_check.json').read_text())
  assert [row['step'] for row in report['rows']] == [5, 15, 30, 40]
  assert [row['test_return'] for row in report['rows']] == [50.0, 160.0, 301.0, 20.0]
  for row in report['rows']:
    got = tuple(row[f'published_{k}'] for k in ('mean', 'min', 'max', 'seeds', 'interpolated'))
    assert got == pytest.approx(EXPECTED[row['step']])
  # The printed table carries the same numbers, interpolated ones marked *.
  lines = [line.split() for line in result.stdout.splitlines()]
  assert ['15', '|', '160.0', '|', '200.0*', '|', '150.0*', '|', '300.0*', '|', '3'] in lines
  assert ['40', '|', '20.0', '|', '-', '|', '-', '|', '-', '|', '0'] in lines
  assert 'Random-policy baseline: 135' in result.stdout
  assert report['command'] is None and report['random'] == 135
  # The last evaluation with a published value is step 30 (sorted by step; the published
  # curves end there): 301 >= 60% of 500.
  assert report['verdict'] == 'PASS' and report['last_step'] == 30
  png = logdir / 'learning_check.png'
  assert png.read_bytes()[:4] == b'\x89PNG'


@pytest.mark.parametrize('points, code, line', [
    # Unsorted on purpose: the last evaluation is the largest step. 301 >= 0.6 * 500 = 300 and > 135.
    ([(30, 301.0), (15, 100.0)], 0,
     'PASS: last test return 301.0 at step 30 >= 60% of published mean 500.0 (300.0) and > random 135'),
    # 299 < 300.
    ([(15, 400.0), (30, 299.0)], 1,
     'FAIL: last test return 299.0 at step 30 < 60% of published mean 500.0 (300.0) and > random 135'),
], ids=['pass', 'below_60_percent'])
def test_exit_code_is_0_only_when_last_return_clears_60_percent_of_published_mean(tmp_path, reference, points, code, line):
  logdir = fake_logdir(tmp_path / 'run', points)
  result = check('--task', 'dmc_cartpole_balance', '--logdir', logdir, '--reference', reference, '--no-train')
  assert result.returncode == code, result.stdout + result.stderr
  assert result.stdout.strip().splitlines()[-1] == line
  report = json.loads((logdir / 'learning_check.json').read_text())
  assert report['verdict'] == line[:4] and report['threshold'] == pytest.approx(300.0)
  assert (logdir / 'learning_check.png').read_bytes()[:4] == b'\x89PNG'


def test_return_at_or_below_random_score_fails_even_above_60_percent(tmp_path, reference):
  logdir = fake_logdir(tmp_path / 'run', [(5, 100.0)])
  result = check('--task', 'dmc_cartpole_balance', '--logdir', logdir, '--reference', reference, '--no-train')
  assert result.returncode == 1
  assert result.stdout.strip().splitlines()[-1] == (
      'FAIL: last test return 100.0 at step 5 >= 60% of published mean 100.0 (60.0) and <= random 135')


def test_task_without_random_score_skips_that_criterion_with_a_note(tmp_path, reference):
  logdir = fake_logdir(tmp_path / 'run', [(30, 600.0)])
  result = check('--task', 'dmc_walker_walk', '--logdir', logdir, '--reference', reference, '--no-train')
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'unknown for dmc_walker_walk' in result.stdout
  assert result.stdout.strip().splitlines()[-1].startswith('PASS: last test return 600.0 at step 30 >= 60% of published mean 1000.0 (600.0) (no random-policy score')


def test_metrics_without_test_return_is_a_clear_error_with_exit_code_1(tmp_path, reference):
  logdir = fake_logdir(tmp_path / 'run', [], extra_rows=[{'step': 200, 'train/return': 3.0}])
  result = check('--task', 'dmc_cartpole_balance', '--logdir', logdir, '--reference', reference, '--no-train')
  assert result.returncode == 1
  assert 'no test/return in' in result.stderr


def test_unknown_task_exits_2_listing_available_tasks_before_training(tmp_path, reference):
  logdir = tmp_path / 'run'
  result = check('--task', 'dmc_walker_fly', '--logdir', logdir, '--reference', reference, '--configs', 'debug', '--steps', 400)
  assert result.returncode == 2
  assert "Unknown task 'dmc_walker_fly'" in result.stderr
  assert 'available tasks: dmc_cartpole_balance, dmc_walker_walk' in result.stderr
  assert not logdir.exists()  # dreamer.py never started.


def test_unknown_flags_and_flags_after_double_dash_pass_through_to_dreamer():
  module = load_module()
  args = module.parse_args(['--task', 'dmc_cartpole_balance', '--steps', '1e5', '--logdir', 'run',
                            '--eval_every', '200', '--', '--seed', '3'])
  command = module.dreamer_command(args)
  assert command[:2] == [sys.executable, str(ROOT / 'dreamer.py')]
  assert command[2:] == ['--configs', 'cpu', '--task', 'dmc_cartpole_balance', '--steps', '1e5',
                         '--logdir', 'run', '--eval_every', '200', '--seed', '3']


def test_failing_dreamer_run_exits_with_its_return_code(tmp_path, reference):
  # dreamer.py rejects the flag during argument parsing (exit 2), before TensorFlow work.
  result = check('--task', 'dmc_cartpole_balance', '--logdir', tmp_path / 'run', '--reference', reference,
                 '--configs', 'debug', '--steps', 400, '--', '--batch_size', '0', timeout=120)
  assert result.returncode == 2
  assert 'dreamer.py failed with exit code 2' in result.stderr


def test_real_debug_run_completes_and_fails_the_check(tmp_path):
  logdir = tmp_path / 'run'
  result = check('--task', 'dmc_cartpole_balance', '--configs', 'debug', '--steps', 400, '--logdir', logdir,
                 timeout=1800)  # The default --reference is the shipped file; a loaded machine is slow.
  assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
  # Debug episodes are 100 env steps, so the return cannot beat the random score 135.
  assert result.returncode == 1
  assert result.stdout.strip().splitlines()[-1].startswith('FAIL: last test return')
  assert (logdir / 'metrics.jsonl').exists()
  assert (logdir / 'learning_check.png').read_bytes()[:4] == b'\x89PNG'
  report = json.loads((logdir / 'learning_check.json').read_text())
  # Evaluations at prefill + k * eval_every (debug: 200 + k * 400) within the 400 steps.
  assert report['verdict'] == 'FAIL' and report['last_step'] == 200
  assert '--configs debug' in report['command'] and '--steps 400' in report['command']
