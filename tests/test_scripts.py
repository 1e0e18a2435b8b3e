"""scripts/plotting.py, compare.py and report.py on synthetic runs with hand-computed
curves, the aggregate statistics, the rule of when a curve has reached a step, bad
input, and the shipped reference files."""

import argparse
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
# Each run also logs training rows up to a later step (A 40, 35, 40; B 20): those do not
# count as evaluations.
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


TRAINED = {(A, 0): 40, (A, 1): 35, (A, 2): 40, (B, 0): 20}


def write_run(path, task, seed, xs, ys, trained, **config):
  path.mkdir(parents=True)
  (path / 'config.json').write_text(json.dumps(dict(task=task, seed=seed, action_repeat=2, **config)))
  rows = [{'step': 3, 'train/return': 5.0}] + [{'step': x, 'test/return': y} for x, y in zip(xs, ys)] + [{'step': trained, 'train/return': 5.0}]
  (path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))


@pytest.fixture
def root(tmp_path):
  for (task, seed), (xs, ys) in OURS.items():
    write_run(tmp_path / 'sweep' / task / 'dreamer' / str(seed), task, seed, xs, ys, TRAINED[task, seed])
  (tmp_path / 'reference.json').write_text(json.dumps(REFERENCE))
  (tmp_path / 'baselines.json').write_text(json.dumps(BASELINES))
  return tmp_path


def script(name, *flags, timeout=600):
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


# The rule: a curve has reached a step when it holds an evaluation there or later.

def test_a_curve_reaches_a_step_only_with_an_evaluation_at_or_after_it():
  xs, ys = [5, 15, 25], [100.0, 200.0, 300.0]
  # Between evaluations: interpolated; at the last one: reached; after it: not, however
  # far training went. Before the first: that first value.
  np.testing.assert_allclose(runs.value_at(xs, ys, [0, 10, 25, 26, 30]), [100, 150, 300, np.nan, np.nan])
  assert runs.measured(xs, [0, 10, 15, 25.0]).tolist() == [False, False, True, True]


def test_default_comparison_steps_are_points_of_every_published_curve_that_reaches_them():
  assert runs.STEPS == (1.05e5, 5.05e5, 1.005e6, 4.905e6)
  for curve in runs.load_reference():
    reached = [s for s in runs.STEPS if s <= curve['xs'][-1]]
    assert runs.measured(curve['xs'], reached).all(), curve['task']
  # 4.905e6 is the last published point: 11 tasks have all 5 seeds there, 9 only 3 or 4.
  seeds = {}
  for curve in runs.load_reference():
    seeds[curve['task']] = seeds.get(curve['task'], 0) + (curve['xs'][-1] >= 4.905e6)
  assert sorted(seeds.values()) == [3] * 4 + [4] * 5 + [5] * 11


# Curves.

def test_binned_curves_sit_at_the_mean_step_of_their_evaluations_and_published_ones_where_measured(root):
  plotting = load('plotting')
  group = runs.group(runs.find_runs([str(root / 'sweep')]))['dreamer', A]
  # Bins of width 10: [0, 10) holds (x, y) seed 0 (0, 0), seed 1 (5, 100), seed 2 (0, 60);
  # [10, 20) (10, 100), (15, 200); [20, 30) (20, 200), (25, 300), (20, 260); [30, 40) (30, 300).
  xs, (mean, low, high) = plotting.curve(group, 10, 'std')
  assert xs == pytest.approx([5 / 3, 12.5, 65 / 3, 30])
  assert mean == pytest.approx([160 / 3, 150, 760 / 3, 300])
  std = [math.sqrt(7600 / 3), math.sqrt(5000), math.sqrt(7600 / 3), 0]
  assert high - mean == pytest.approx(std) and mean - low == pytest.approx(std)
  _, (_, low, high) = plotting.curve(group, 10, 'minmax')
  assert low.tolist() == [0, 100, 200, 300] and high.tolist() == [100, 200, 300, 300]
  _, (mean, low, high) = plotting.curve(group, 10, 'ci')
  assert np.all(low <= mean) and np.all(mean <= high)
  assert np.all(high - low <= np.array([100, 100, 100, 0]))  # Within the seeds' range.
  assert np.all(high[:3] - low[:3] > 0)
  # One published point per bin stays at its own step, not at the bin's centre (5, 25, 45).
  published = runs.group(runs.load_reference(root / 'reference.json'))[runs.PUBLISHED, A]
  xs, (mean, _, _) = plotting.curve(published, 10, 'std')
  assert xs.tolist() == [0, 20, 40] and mean.tolist() == [0, 150, 300]
  # The shipped curves, in the default bins of 1e5: at 5e3 + k x 1e5.
  shipped = runs.group(runs.load_reference())[runs.PUBLISHED, B]
  xs, _ = plotting.curve(shipped, 1e5, 'std')
  assert xs[:3].tolist() == [5e3, 1.05e5, 2.05e5]


def curves_args(**changes):
  return dict(dict(bin=10, spread='std', xmax=40, x='step', y='test/return'), **changes)


@pytest.mark.parametrize('tasks', [[A], [A, B]], ids=['one_panel', 'two_panels'])
def test_curves_have_a_y_label_and_the_whole_legend_inside_the_figure(root, tasks):
  plotting = load('plotting')
  groups = runs.group(runs.find_runs([str(root / 'sweep')]) + runs.load_reference(root / 'reference.json'))
  methods = ['dreamer', runs.PUBLISHED]
  colors = {m: f'C{i}' for i, m in enumerate(methods + list(plotting.BASELINES))}
  fig = plotting.curves_figure(groups, methods, ['dreamer'], tasks, BASELINES, colors, argparse.Namespace(**curves_args()))
  fig.canvas.draw()
  legend, = fig.legends
  box, frame = legend.get_window_extent(), fig.bbox
  assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
  labels = [t.get_text() for t in legend.get_texts()]
  assert labels == ['dreamer', runs.PUBLISHED, 'D4PG (1e8 steps)', 'A3C (1e8 steps, proprio)']
  assert fig.axes[0].get_ylabel() == 'test return'
  # The x label sits above the legend, below the panels.
  xlabel = fig._supxlabel.get_window_extent()
  assert xlabel.y0 >= box.y1 - 1 and xlabel.y1 <= fig.axes[0].get_window_extent().y0
  assert fig.get_figwidth() == pytest.approx(len(tasks) * 3.2)


def test_plotting_writes_png_and_pdf_figures_of_the_expected_size(root):
  out = root / 'figures'
  result = script('plotting', *figure_flags(root, out))
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''  # No warning of matplotlib or numpy.
  # Two tasks: two 3.2 inch panels at 100 dpi, 2.6 inches high plus the legend.
  width, height = png_size(out / 'curves.png')
  assert width == 640 and height > 260
  # Summary at 25 (see the summary test): one group of 4 bars, the 7 inch minimum width.
  assert png_size(out / 'summary.png') == (700, 380)
  assert png_size(out / 'aggregate.png') == (1600, 380)  # Four panels of 4 x 3.8 inches.
  for name in ('curves', 'summary', 'aggregate'):
    assert (out / f'{name}.pdf').read_bytes()[:5] == b'%PDF-'
  numbers = json.loads((out / 'aggregate.json').read_text())
  # At step 10 both tasks: ours A 100, 150, 160 (every seed counts), B 900; the mean over
  # tasks of each task's mean. Published A 100, 50 and B 100, 200.
  at10 = numbers['chosen_steps'][0]
  assert at10['step'] == 10 and at10['tasks'] == [A, B]
  assert at10['seeds'] == {'dreamer': [3, 1], runs.PUBLISHED: [2, 2]}
  assert at10['dreamer']['mean'] == pytest.approx((410 / 3 + 900) / 2 / 1000)
  assert at10[runs.PUBLISHED]['mean'] == pytest.approx((75 + 150) / 2 / 1000)
  # At 25 B's only seed (last evaluated at 10) has not got there: A alone, with A's two
  # seeds that were evaluated at 25 or later (seed 2's last evaluation is at 20).
  at25 = numbers['chosen_steps'][1]
  assert at25['tasks'] == [A] and at25['seeds']['dreamer'] == [2]
  assert at25['dreamer']['mean'] == pytest.approx((250 + 300) / 2 / 1000)


# Summary bars and aggregates.

def test_summary_bars_compare_every_method_over_the_same_tasks_at_the_same_step(root):
  plotting = load('plotting')
  groups = runs.group(runs.find_runs([str(root / 'sweep')]) + runs.load_reference(root / 'reference.json'))
  # At 25 only A has ours and the published curves: every bar over A alone.
  summary = plotting.summary_scores(groups, ['dreamer'], BASELINES, [10, 25])
  assert (summary['step'], summary['tasks']) == (25, [A])
  (group,) = summary['groups']
  bars = {b['name']: b['mean'] for b in group['bars']}
  assert bars == pytest.approx({'dreamer': 275, runs.PUBLISHED: 187.5, 'd4pg_100m': 990, 'a3c_100m_proprio': 950})
  assert summary['left_out'] == ['PlaNet (1e6 steps)', 'SLAC (3e6 steps)']
  # At 10 both tasks. A3C reports A only: a group of its own, with ours and the published
  # curves over A beside it. The paper's marks only where a bar covers the paper's tasks:
  # the published curves all their tasks (A, B), D4PG its (A, B), A3C its (A).
  summary = plotting.summary_scores(groups, ['dreamer'], BASELINES, [10])
  both, only_a = summary['groups']
  assert (both['tasks'], only_a['tasks']) == ([A, B], [A])
  assert [(b['name'], pytest.approx(b['mean']), b['paper']) for b in both['bars']] == [
      ('dreamer', pytest.approx((410 / 3 + 900) / 2), None), (runs.PUBLISHED, pytest.approx(112.5), 823),
      ('d4pg_100m', pytest.approx(980), 786)]
  assert [(b['name'], pytest.approx(b['mean']), b['paper']) for b in only_a['bars']] == [
      ('dreamer', pytest.approx(410 / 3), None), (runs.PUBLISHED, pytest.approx(75), None),
      ('a3c_100m_proprio', pytest.approx(950), 243)]
  assert both['bars'][0]['seeds'] == [3, 1]


def test_shipped_reference_means_over_the_paper_tasks_match_the_data_and_the_papers_marks():
  plotting = load('plotting')
  published, baselines = runs.load_reference(), runs.load_baselines()
  finals = {}
  for run in json.loads((ROOT / 'reference' / 'dreamer_curves.json').read_text()):
    if run['xs'][-1] >= 4.905e6:
      finals.setdefault(run['task'], []).append(run['ys'][-1])
  expected = sum(sum(v) / len(v) for v in finals.values()) / len(finals)
  # Our runs stand in as a copy of the published curves, so every task is shared.
  ours = [dict(r, method='copy') for r in published]
  summary = plotting.summary_scores(runs.group(ours + published), ['copy'], baselines, [4.905e6])
  first = summary['groups'][0]
  assert len(first['tasks']) == 20
  assert first['bars'][1] == dict(name=runs.PUBLISHED, label=runs.PUBLISHED, mean=pytest.approx(expected), paper=823,
                                  seeds=[len(finals[t]) for t in first['tasks']])
  d4pg = [v['d4pg_100m'] for v in baselines.values()]
  (d4pg_group,) = [g for g in summary['groups'] if any(b['name'] == 'd4pg_100m' for b in g['bars'])]
  bar = next(b for b in d4pg_group['bars'] if b['name'] == 'd4pg_100m')
  assert len(d4pg_group['tasks']) == 18 and bar['mean'] == pytest.approx(sum(d4pg) / 18) and bar['paper'] == 786
  assert round(bar['mean']) == 786  # The paper's D4PG mean is over these 18 tasks.


def test_aggregate_uses_every_seed_and_weighs_every_task_the_same():
  plotting = load('plotting')
  matrix = np.array([[0.1, 0.5], [0.2, 0.6], [0.3, 0.7], [0.4, 0.9]])  # 4 runs x 2 tasks.
  (point, interval), = plotting.aggregate({'m': list(matrix.T)}, reps=500).values()
  flat = np.sort(matrix.ravel())
  assert point[0] == pytest.approx(flat.mean())  # 0.4625
  assert point[1] == pytest.approx(flat[2:6].mean())  # The middle half: 0.45.
  assert np.all(interval[0] <= point) and np.all(point <= interval[1])
  assert np.all(interval >= 0.1) and np.all(interval <= 0.9)
  # Task 1 has 2 runs (0.1, 0.3), task 2 has 4 (0.2, 0.4, 0.6, 0.8): none is cut. The mean
  # is (0.2 + 0.5) / 2. IQM: each score of task 1 weighs 1/4, of task 2 1/8; sorted, the
  # middle half of the weight [0.25, 0.75] holds 0.2 (1/8), 0.3 (1/4), 0.4 (1/8).
  (point, _), = plotting.aggregate({'m': [np.array([0.1, 0.3]), np.array([0.2, 0.4, 0.6, 0.8])]}, reps=200).values()
  assert point[0] == pytest.approx(0.35)
  assert point[1] == pytest.approx((0.2 / 8 + 0.3 / 4 + 0.4 / 8) / 0.5)  # 0.3
  profile = plotting.profile([np.array([0.1, 0.3]), np.array([0.2, 0.4, 0.6, 0.8])], np.array([0.25, 0.5]))
  assert profile == pytest.approx([(1 / 2 + 3 / 4) / 2, (0 + 2 / 4) / 2])


def test_tasks_without_a_published_curve_say_so_and_draw_no_empty_panel_or_warning(tmp_path):
  for task in ('dmc_cartpole_two_poles', 'atari_pong'):
    write_run(tmp_path / 'sweep' / task / 'dreamer' / '0', task, 0, [5e3, 1.05e5], [10.0, 20.0], 1.05e5)
  result = script('compare', tmp_path / 'sweep', '--out', tmp_path / 'table', '--steps', 1.05e5)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert '| dmc_cartpole_two_poles | dreamer | 105,000 | 20.0 | 1/1 | no published curve | - |  |' in lines
  assert '| mean over tasks | dreamer | 105,000 | no task with a published curve | 0/2 tasks | no published curve | - |  |' in lines
  out = tmp_path / 'figures'
  result = script('plotting', tmp_path / 'sweep', '--out', out, '--reps', 50)
  assert result.returncode == 0 and result.stderr == '', result.stderr
  numbers = json.loads((out / 'aggregate.json').read_text())
  # The aggregate and summary: our DMC task alone (Atari is not on the 0-1000 scale), no
  # published method without curves there.
  assert numbers['methods'] == ['dreamer'] and numbers['chosen_steps'][0]['tasks'] == ['dmc_cartpole_two_poles']
  assert [b['name'] for b in numbers['summary']['groups'][0]['bars']] == ['dreamer']
  # Only Atari: no summary or aggregate figure at all, and no stale one left.
  atari = tmp_path / 'atari'
  (tmp_path / 'sweep' / 'atari_pong').rename(atari)
  (tmp_path / 'sweep').rename(tmp_path / 'unused')
  result = script('plotting', atari, '--out', out, '--reps', 50)
  assert result.returncode == 0 and result.stderr == '', result.stderr
  assert 'No summary figure' in result.stdout and 'No aggregate figure' in result.stdout
  assert (out / 'curves.png').exists() and not (out / 'summary.png').exists() and not (out / 'aggregate.png').exists()


# The comparison table.

def test_compare_table_has_interpolated_means_marked_and_published_seed_counts(root):
  single = root / 'single'
  write_run(single, A, 0, [0, 40], [0, 400], 40)
  out = root / 'table'
  result = script('compare', root / 'sweep', f'tf2={single}', '--steps', 10, 25, 40, 100,
                  '--reference', root / 'reference.json', '--out', out)
  assert result.returncode == 0, result.stderr
  rows = {(r['task'], r['method'], r['step']): r for r in json.loads((out / 'comparison.json').read_text())}
  # A at 10: seeds 100 (measured), 150 (between 5 and 15), 160 (between 0 and 20); published
  # 100, 50, both interpolated between 0 and 20.
  r = rows[A, 'dreamer', 10]
  assert (r['mean'], r['se'], r['reached']) == (pytest.approx(410 / 3), pytest.approx(math.sqrt(3100) / 3), 3)
  assert (r['published_mean'], r['published_std'], r['published_seeds']) == (pytest.approx(75), pytest.approx(25 * math.sqrt(2)), 2)
  assert r['interpolated'] and r['published_interpolated']
  assert r['difference'] == pytest.approx((410 / 3 - 75) / (25 * math.sqrt(2))) and not r['flagged']
  # A at 25: 250 and 300; seed 2, last evaluated at 20, has not reached it (it trained to 40).
  r = rows[A, 'dreamer', 25]
  assert (r['mean'], r['se'], r['reached'], r['seeds']) == (pytest.approx(275), pytest.approx(25), 2, 3)
  assert r['difference'] == pytest.approx((275 - 187.5) / (125 / math.sqrt(2)))
  # A at 40: no seed was evaluated there; the published curves were, exactly.
  r = rows[A, 'dreamer', 40]
  assert (r['reached'], r['mean'], r['published_mean'], r['published_interpolated']) == (0, None, pytest.approx(300), False)
  assert rows[A, 'dreamer', 100]['published_seeds'] == 0  # Past the published curves' end.
  # B at 10: 900 measured, against 150 +- 70.7: flagged.
  r = rows[B, 'dreamer', 10]
  assert r['difference'] == pytest.approx(750 / (50 * math.sqrt(2))) and r['flagged'] and r['se'] is None
  assert not r['interpolated'] and r['published_interpolated']
  # The second method, one seed, in the same table.
  assert rows[A, 'tf2', 10]['mean'] == pytest.approx(100) and rows[A, 'tf2', 10]['reached'] == 1
  # Means over the two tasks at 10, with the published seeds over them.
  r = rows['mean over tasks', 'dreamer', 10]
  assert (r['mean'], r['published_mean'], r['reached'], r['published_seeds']) == (
      pytest.approx((410 / 3 + 900) / 2), pytest.approx(112.5), 2, 4)
  table = result.stdout.splitlines()
  assert '| dmc_cartpole_balance | dreamer | 25 | 275.0 ± 25.0* | 2/3 | 187.5 ± 88.4* (2) | 0.99 |  |' in table
  assert '| dmc_cartpole_balance | dreamer | 40 | not reached | 0/3 | 300.0 ± 141.4 (2) | - |  |' in table
  assert '| dmc_cartpole_balance | dreamer | 100 | not reached | 0/3 | not reached | - |  |' in table
  assert '| dmc_walker_walk | dreamer | 10 | 900.0 | 1/1 | 150.0 ± 70.7* (2) | 10.61 | ! |' in table
  # Its difference: the mean of A's (410 / 3 - 75) / 35.36 = 1.744 and B's 10.607.
  assert '| mean over tasks | dreamer | 10 | 518.3* | 2/2 tasks | 112.5* (4 seeds over 2 tasks) | 6.18 |  |' in table
  assert any(line.startswith('* not measured at this step') for line in table)
  header = (out / 'comparison.csv').read_text().splitlines()[0]
  assert header.split(',')[:4] == ['task', 'method', 'step', 'mean']


# Bad input and pipes.

def test_missing_source_is_a_one_line_error_with_exit_code_2(tmp_path):
  for name in ('compare', 'plotting'):
    result = script(name, tmp_path / 'nowhere')
    assert result.returncode == 2
    assert f'{tmp_path / "nowhere"} does not exist; give sweep roots or logdirs.' in result.stderr


@pytest.mark.parametrize('content, message', [
    ('', 'is empty'),
    ('[{"task": "dmc_cartpole_balance", "xs": [0], "ys": [1]}]', "run 0 lacks the key 'seed'"),
    ('[{"task": "t", "seed": 0, "xs": [0, 1], "ys": [1]}]', 'run 0 is not valid: xs and ys must be lists of equal length'),
    ('{"not": "runs"', 'is not JSON'),
], ids=['empty', 'missing_key', 'unequal_lengths', 'not_json'])
def test_bad_reference_file_is_a_one_line_error_naming_the_file(root, content, message):
  bad = root / 'bad.json'
  bad.write_text(content)
  result = script('compare', root / 'sweep', '--reference', bad, '--out', root / 'table')
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
  assert f'reference file {bad}' in result.stderr and message in result.stderr


def test_nonpositive_steps_and_unknown_tasks_are_errors(root):
  for name in ('compare', 'plotting'):
    result = script(name, root / 'sweep', '--steps', 1e5, 0, '--reference', root / 'reference.json')
    assert result.returncode == 2 and '--steps must be positive env steps, got 0.' in result.stderr, result.stderr
  result = script('plotting', root / 'sweep', '--tasks', 'dmc_walker_wlk', '--reference', root / 'reference.json',
                  '--out', root / 'figures')
  assert result.returncode == 2
  assert f'no runs and no published curve for dmc_walker_wlk; known tasks: {A}, {B}.' in result.stderr
  assert not (root / 'figures').exists()


def test_compare_into_a_closed_pipe_ends_quietly_after_writing_its_files(root):
  out = root / 'table'
  process = subprocess.Popen([sys.executable, str(ROOT / 'scripts' / 'compare.py'), str(root / 'sweep'), '--out', str(out),
                              '--reference', str(root / 'reference.json')], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  process.stdout.close()  # The reader is gone before the first line, as `| head -0` does.
  _, stderr = process.communicate(timeout=600)
  assert process.returncode == 0 and stderr == b'', stderr.decode()
  assert len(json.loads((out / 'comparison.json').read_text())) == 2 * 4 + 4


# The report.

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
  assert '| dmc_walker_walk | dreamer | 10 | 900.0 | 1/1 | 150.0 ± 70.7* (2) | 10.61 | ! |' in text
  for name in ('curves', 'summary', 'aggregate'):
    assert f'({name}.png)' in text and png_size(out / f'{name}.png')[0] > 0
  lines = text.splitlines()
  row = next(line for line in lines if line.startswith(f'| {A} | dreamer | 0 |'))
  assert '| 200 / 400 | 300.0 | abc1234 | 0:02:05 (2 sweep attempts) |' in row
  # B has no episodes/ folder (a run kept without them): its steps are its last logged step, 20.
  row = next(line for line in lines if line.startswith(f'| {B} | dreamer | 0 |'))
  assert '| 20 / ? | 900.0 | unknown | 1:00:00 (first to last episode file) |' in row
  row = next(line for line in lines if line.startswith(f'| {A} | dreamer | 1 |'))
  assert '| unknown | - (unknown) |' in row
  assert json.loads((out / 'configs' / f'{A}_dreamer_0.json').read_text())['commit'] == 'abc1234'
  assert (out / 'comparison.csv').exists() and (out / 'aggregate.json').exists()


def test_report_gives_an_appendix_commands_protocol_settings_machine_compute_and_final_scores(tmp_path):
  sweep = tmp_path / 'sweep'
  machine = dict(cpu='Test CPU 9000', cores=8, gpus=['Test GPU'], python='3.11.7', packages=dict(numpy='2.4.6'), device='1')
  for task, seed, last in ((A, 0, 300.0), (A, 1, 500.0), (B, 0, 700.0)):
    logdir = sweep / task / 'dreamer' / str(seed)
    write_run(logdir, task, seed, [5e3, 1.05e5], [100.0, last], 1.05e5, logdir=str(logdir), configs=['cpu'],
              cnn_depth=16, num_units=200, batch_size=10, steps=105000, eval_episodes=1, eval_noise=0.0,
              eval_every=10000, prefill=5000, time_limit=1000, horizon=15 if seed == 0 else 10, commit='abc1234')
    (logdir / 'stdout.log').write_text('\n'.join([
        runs.SWEEP_START.format(time='t'), runs.SWEEP_MACHINE + json.dumps(machine),
        runs.SWEEP_END.format(outcome='exited with code 0', seconds=1800)]) + '\n')
  out = tmp_path / 'report'
  result = script('report', sweep, '--out', out, '--reps', 50)
  assert result.returncode == 0, result.stderr
  text = (out / 'REPORT.md').read_text()
  # Training commands: the preset, then only what differs from it (seed 1 of A: horizon 10).
  assert ('python dreamer.py --configs cpu --steps 105000 --task TASK --seed SEED --logdir sweep/TASK/dreamer/SEED') in text
  assert ('python dreamer.py --configs cpu --steps 105000 --horizon 10 --task TASK --seed SEED '
          '--logdir sweep/TASK/dreamer/SEED') in text
  assert f'python scripts/sweep.py --root sweep --method dreamer --tasks {A} {B} --seeds 0 --configs cpu --steps 105000' in text
  # Evaluation protocol, settings that differ from the paper's, machine, compute.
  assert 'mean return of 1 test episode(s)' in text and 'no exploration noise' in text
  assert '| `cnn_depth` | 32 | 16 |' in text and '| `batch_size` | 50 | 10 |' in text
  assert '| `horizon` | 15 | 15 (2 runs); 10 (1 run) |' in text
  assert '| `deter_size`' not in text  # At the paper's default: not listed.
  assert 'Test CPU 9000, 8 logical cores, Test GPU (run given GPU 1); Python 3.11.7, numpy 2.4.6' in text
  assert '1.50 hours of wall-clock over 3 runs' in text
  # Final scores at 1.05e5 per task with the baselines' numbers: A 300, 500; B 700.
  assert '| task | dreamer | published | D4PG (1e8 steps) | A3C (1e8 steps, proprio) | PlaNet (1e6 steps) | SLAC (3e6 steps) |' in text
  published = {t: [r['ys'][1] for r in runs.load_reference() if r['task'] == t] for t in (A, B)}
  pa = np.array(published[A])
  assert (f'| {A} | 400.0 ± 100.0 (2) | {pa.mean():.1f} ± {pa.std(ddof=1):.1f} (5) | 992.8 | 951.6 | - | - |') in text
  # The summary numbers; no absolute path of this machine anywhere.
  assert f'| 2: cartpole_balance, walker_walk | dreamer (1-2 seeds per task) | {(400 + 700) / 2:.1f} | - |' in text
  for path in [out / 'REPORT.md', *(out / 'configs').iterdir()]:
    assert str(tmp_path) not in path.read_text(), path
