"""scripts/plotting.py, compare.py and report.py on synthetic runs with hand-computed
curves, the aggregate statistics, and the shipped reference files."""

import importlib.util
import json
import math
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest

import runs

ROOT = pathlib.Path(__file__).resolve().parent.parent
A, B = 'dmc_cartpole_balance', 'dmc_walker_walk'
# Three seeds of A logging at different steps, one seed of B:
#   A seed 0: y = 10 x at x = 0, 10, 20, 30;  seed 1: y = 10 x + 50 at 5, 15, 25;
#   A seed 2: y = 10 x + 60 at 0, 20;         B seed 0: 900 at 0, 10.
# Each run's last logged step (how far it got): A 40, 35, 40; B 20.
OURS = {(A, 0): ([0, 10, 20, 30], [0, 100, 200, 300]), (A, 1): ([5, 15, 25], [100, 200, 300]),
        (A, 2): ([0, 20], [60, 260]), (B, 0): ([0, 10], [900, 900])}
# Published: A's two seeds y = 10 x and y = 5 x at 0, 20, 40; B's flat 100 and 200.
REFERENCE = [dict(task=A, method='dreamer', seed='0', xs=[0, 20, 40], ys=[0, 200, 400]),
             dict(task=A, method='dreamer', seed='1', xs=[0, 20, 40], ys=[0, 100, 200]),
             dict(task=B, method='dreamer', seed='0', xs=[0, 40], ys=[100, 100]),
             dict(task=B, method='dreamer', seed='1', xs=[0, 40], ys=[200, 200])]
BASELINES = {A: {'d4pg_100m': 990.0, 'a3c_100m_proprio': 950.0}, B: {'d4pg_100m': 970.0}}


def load(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / 'scripts' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


UNTIL = {(A, 0): 40, (A, 1): 35, (A, 2): 40, (B, 0): 20}


def write_run(logdir, task, seed, xs, ys, until):
  logdir.mkdir(parents=True)
  (logdir / 'config.json').write_text(json.dumps(dict(task=task, seed=seed, action_repeat=2)))
  rows = [{'step': 3, 'train/return': 5.0}] + [{'step': x, 'test/return': y} for x, y in zip(xs, ys)] + [{'step': until, 'train/return': 5.0}]
  (logdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))


@pytest.fixture
def root(tmp_path):
  for (task, seed), (xs, ys) in OURS.items():
    write_run(tmp_path / 'sweep' / task / 'dreamer' / str(seed), task, seed, xs, ys, UNTIL[task, seed])
  (tmp_path / 'reference.json').write_text(json.dumps(REFERENCE))
  (tmp_path / 'baselines.json').write_text(json.dumps(BASELINES))
  return tmp_path


def script(name, *flags, timeout=300):
  return subprocess.run([sys.executable, str(ROOT / 'scripts' / f'{name}.py'), *map(str, flags)],
                        capture_output=True, text=True, timeout=timeout)


def figure_flags(root, out):
  """Sources, files and small settings of the plotting and report runs."""
  return [root / 'sweep', '--out', out, '--bin', 10, '--steps', 10, 25, '--reps', 200,
          '--reference', root / 'reference.json', '--baselines', root / 'baselines.json']


def png_size(path):
  data = path.read_bytes()
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  return struct.unpack('>II', data[16:24])


def test_binned_means_and_spreads_over_seeds_match_hand_computed_values(root):
  plotting = load('plotting')
  group = runs.group(runs.find_runs([str(root / 'sweep')]))['dreamer', A]
  # Bins of width 10: [0, 10) holds 0, 100, 60; [10, 20) 100, 200; [20, 30) 200, 300, 260; [30, 40) 300.
  xs, (mean, low, high) = plotting.curve(group, 10, 'std')
  assert xs.tolist() == [5, 15, 25, 35]
  assert mean == pytest.approx([160 / 3, 150, 760 / 3, 300])
  std = [math.sqrt(7600 / 3), math.sqrt(5000), math.sqrt(7600 / 3), 0]
  assert high - mean == pytest.approx(std) and mean - low == pytest.approx(std)
  _, (_, low, high) = plotting.curve(group, 10, 'minmax')
  assert low.tolist() == [0, 100, 200, 300] and high.tolist() == [100, 200, 300, 300]
  _, (mean, low, high) = plotting.curve(group, 10, 'ci')
  assert np.all(low <= mean) and np.all(mean <= high)
  assert np.all(high - low <= np.array([100, 100, 100, 0]))  # Within the seeds' range.
  assert np.all(high[:3] - low[:3] > 0)


def test_aggregate_mean_and_iqm_equal_a_numpy_computation():
  plotting = load('plotting')
  matrix = np.array([[0.1, 0.5], [0.2, 0.6], [0.3, 0.7], [0.4, 0.9]])  # 4 runs x 2 tasks.
  (point, interval), = plotting.aggregate({'m': matrix}, reps=500).values()
  flat = np.sort(matrix.ravel())
  assert point[0] == pytest.approx(flat.mean())  # 0.4625
  assert point[1] == pytest.approx(flat[2:6].mean())  # The middle half: 0.45.
  assert np.all(interval[0] <= point) and np.all(point <= interval[1])
  assert np.all(interval >= 0.1) and np.all(interval <= 0.9)


def test_mean_final_score_of_the_shipped_reference_is_what_the_data_gives():
  plotting = load('plotting')
  published = runs.load_reference()
  scores = plotting.summary_scores(runs.group(published), [runs.PUBLISHED], runs.load_baselines())
  finals = {}
  for run in json.loads((ROOT / 'reference' / 'dreamer_curves.json').read_text()):
    finals.setdefault(run['task'], []).append(run['ys'][-1])
  expected = sum(sum(v) / len(v) for v in finals.values()) / len(finals)
  assert len(finals) == 20 and abs(expected - 805.5) < 0.1
  assert scores[runs.PUBLISHED] == (pytest.approx(expected), 20)
  d4pg = [v['d4pg_100m'] for v in json.loads((ROOT / 'reference' / 'baselines.json').read_text()).values()]
  assert scores['d4pg_100m'] == (pytest.approx(sum(d4pg) / len(d4pg)), len(d4pg))


def test_plotting_writes_png_and_pdf_figures_of_the_expected_size(root):
  out = root / 'figures'
  result = script('plotting', *figure_flags(root, out))
  assert result.returncode == 0, result.stderr
  # Two tasks: a 1 x 2 grid of 3.2 x 2.6 inch panels plus 0.6 inches of legend, at 100 dpi.
  assert png_size(out / 'curves.png') == (640, 320)
  assert png_size(out / 'summary.png') == (700, 350)
  assert png_size(out / 'aggregate.png') == (1600, 360)
  for name in ('curves', 'summary', 'aggregate'):
    assert (out / f'{name}.pdf').read_bytes()[:5] == b'%PDF-'
  numbers = json.loads((out / 'aggregate.json').read_text())
  # At step 10 both tasks have values: ours A 410/3 (seeds 100, 150, 160), B 900 -> only one
  # seed reached on B, so the matrix keeps one run per task: A seed 0 (100) and B (900).
  at10 = numbers['chosen_steps'][0]
  assert at10['step'] == 10 and at10['tasks'] == [A, B]
  assert at10['dreamer']['mean'] == pytest.approx((100 + 900) / 2 / 1000)
  assert at10[runs.PUBLISHED]['mean'] == pytest.approx((100 + 50 + 100 + 200) / 4 / 1000)
  # At 25 B's only seed has not got there (last point 10, interval 10): A alone.
  assert numbers['chosen_steps'][1]['tasks'] == [A]


def test_compare_table_has_interpolated_means_and_std_unit_differences(root):
  single = root / 'single'
  write_run(single, A, 0, [0, 40], [0, 400], 40)
  out = root / 'table'
  result = script('compare', root / 'sweep', f'tf2={single}', '--steps', 10, 25, 40, 100,
                  '--reference', root / 'reference.json', '--out', out)
  assert result.returncode == 0, result.stderr
  rows = {(r['task'], r['method'], r['step']): r for r in json.loads((out / 'comparison.json').read_text())}
  # A at 10: seeds 100, 150 (between 5 and 15), 160 (between 0 and 20); published 100, 50.
  r = rows[A, 'dreamer', 10]
  assert (r['mean'], r['se'], r['reached']) == (pytest.approx(410 / 3), pytest.approx(math.sqrt(3100) / 3), 3)
  assert (r['published_mean'], r['published_std']) == (pytest.approx(75), pytest.approx(25 * math.sqrt(2)))
  assert r['difference'] == pytest.approx((410 / 3 - 75) / (25 * math.sqrt(2))) and not r['flagged']
  # A at 25: 250, 300, 260 (seed 2 holds 260 within its interval of 20).
  r = rows[A, 'dreamer', 25]
  assert (r['mean'], r['se']) == (pytest.approx(270), pytest.approx(math.sqrt(700 / 3)))
  # A at 40: seed 1 (logged up to 35) has not got there.
  r = rows[A, 'dreamer', 40]
  assert (r['mean'], r['se'], r['reached'], r['seeds']) == (pytest.approx(280), pytest.approx(20), 2, 3)
  assert r['difference'] == pytest.approx((280 - 300) / (100 * math.sqrt(2)))
  assert rows[A, 'dreamer', 100]['reached'] == 0 and rows[A, 'dreamer', 100]['mean'] is None
  # B at 10: 900 against 150 +- 70.7: flagged.
  r = rows[B, 'dreamer', 10]
  assert r['difference'] == pytest.approx(750 / (50 * math.sqrt(2))) and r['flagged'] and r['se'] is None
  # The second method, one seed, in the same table.
  assert rows[A, 'tf2', 10]['mean'] == pytest.approx(100) and rows[A, 'tf2', 10]['reached'] == 1
  # Means over the two tasks at 10.
  r = rows['mean over tasks', 'dreamer', 10]
  assert (r['mean'], r['published_mean'], r['reached']) == (pytest.approx((410 / 3 + 900) / 2), pytest.approx(112.5), 2)
  table = result.stdout.splitlines()
  assert '| dmc_cartpole_balance | dreamer | 100 | not reached | 0/3 | - | - |  |' in table  # None got there.
  assert '| dmc_walker_walk | dreamer | 10 | 900.0 | 1/1 | 150.0 ± 70.7 | 10.61 | ! |' in table
  header = (out / 'comparison.csv').read_text().splitlines()[0]
  assert header.split(',')[:4] == ['task', 'method', 'step', 'mean']


def test_value_at_holds_the_last_evaluation_only_as_far_as_the_run_got():
  xs, ys = [5, 15, 25], [100.0, 200.0, 300.0]
  steps = [10, 25, 30, 35]
  # A run still going, logged up to step 28: 30 and 35 are not reached yet.
  np.testing.assert_allclose(runs.value_at(xs, ys, steps, until=28), [150, 300, np.nan, np.nan])
  # A run that stopped at its budget of 30, past its last evaluation.
  np.testing.assert_allclose(runs.value_at(xs, ys, steps, until=30), [150, 300, 300, np.nan])
  # Published curves (no until): one evaluation interval past the last point.
  np.testing.assert_allclose(runs.value_at(xs, ys, steps), [150, 300, 300, 300])


def test_missing_source_is_a_one_line_error_with_exit_code_2(tmp_path):
  for name in ('compare', 'plotting'):
    result = script(name, tmp_path / 'nowhere')
    assert result.returncode == 2
    assert f'{tmp_path / "nowhere"} does not exist; give sweep roots or logdirs.' in result.stderr


def test_report_holds_the_table_figures_and_every_runs_commit_steps_and_wall_clock(root):
  logdir = root / 'sweep' / A / 'dreamer' / '0'
  config = json.loads((logdir / 'config.json').read_text())
  (logdir / 'config.json').write_text(json.dumps(dict(config, commit='abc1234', steps=400)))
  (logdir / 'episodes').mkdir()
  (logdir / 'episodes' / f'20240101T100000000000-{0:032x}-101.npz').touch()  # (101 - 1) x 2 = 200 env steps.
  (logdir / 'stdout.log').write_text('\n'.join([
      runs.SWEEP_START.format(time='t'), 'training...', runs.SWEEP_END.format(outcome='exited with code 1', seconds=100),
      runs.SWEEP_END.format(outcome=runs.SWEEP_STOPPED, seconds=25)]) + '\n')
  other = root / 'sweep' / B / 'dreamer' / '0' / 'test_episodes'
  other.mkdir()
  for stamp in ('20240101T100000000000', '20240101T110000500000'):  # One hour and half a second apart.
    (other / f'{stamp}-{0:032x}-11.npz').touch()
  out = root / 'report'
  result = script('report', *figure_flags(root, out))
  assert result.returncode == 0, result.stderr
  text = (out / 'REPORT.md').read_text()
  assert '| dmc_walker_walk | dreamer | 10 | 900.0 | 1/1 | 150.0 ± 70.7 | 10.61 | ! |' in text
  for name in ('curves', 'summary', 'aggregate'):
    assert f'({name}.png)' in text and png_size(out / f'{name}.png')[0] > 0
  lines = text.splitlines()
  row = next(line for line in lines if line.startswith(f'| {A} | dreamer | 0 |'))
  assert '| 200 / 400 | 300.0 | abc1234 | 0:02:05 (2 sweep attempts) |' in row
  row = next(line for line in lines if line.startswith(f'| {B} | dreamer | 0 |'))
  assert '| 0 / ? | 900.0 | unknown | 1:00:00 (first to last episode file) |' in row
  row = next(line for line in lines if line.startswith(f'| {A} | dreamer | 1 |'))
  assert '| unknown | - (unknown) |' in row
  assert json.loads((out / 'configs' / f'{A}_dreamer_0.json').read_text())['commit'] == 'abc1234'
  assert (out / 'comparison.csv').exists() and (out / 'aggregate.json').exists()
