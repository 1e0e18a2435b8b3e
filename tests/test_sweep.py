"""scripts/sweep.py: the grid of commands, skipping finished runs, a real two-job
debug sweep with a failing run beside it, --status, and Ctrl-C."""

import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

import runs

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'scripts' / 'sweep.py'
DEBUG = ['--configs', 'debug', '--steps', '400', '--log_images', 'False']


def sweep(*flags, timeout=60):
  return subprocess.run([sys.executable, str(SCRIPT), *map(str, flags)], capture_output=True, text=True, timeout=timeout)


def status(root, *flags):
  """{(task, seed): (steps, budget, last return, state)} from --status."""
  result = sweep('--root', root, '--status', *flags)
  assert result.returncode == 0, result.stderr
  table = {}
  for line in result.stdout.splitlines():
    task, _, seed, steps, _, budget, _, _, last, *state = line.split()
    table[task, int(seed)] = (int(steps), budget, last, ' '.join(state))
  return table


def fake_run(logdir, steps, lengths):
  """A logdir with config.json and empty episode files named by their lengths."""
  (logdir / 'episodes').mkdir(parents=True)
  (logdir / 'config.json').write_text(json.dumps(dict(steps=steps, action_repeat=2, task='dmc_cartpole_balance')))
  for i, length in enumerate(lengths):
    (logdir / 'episodes' / f'20240101T00000{i}000000-{i:032x}-{length}.npz').touch()


def test_dry_run_prints_one_command_per_task_and_seed_with_flags_passed_through(tmp_path):
  result = sweep('--root', tmp_path, '--tasks', 'dmc_cartpole_balance', 'dmc_walker_walk', '--seeds', 0, 1, 2,
                 '--method', 'mine', '--dry-run', '--configs', 'debug', '--steps', '1e3')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 6
  expected = [(t, s) for t in ('dmc_cartpole_balance', 'dmc_walker_walk') for s in (0, 1, 2)]
  for line, (task, seed) in zip(lines, expected):
    logdir = tmp_path / task / 'mine' / str(seed)
    words = shlex.split(line)
    assert words[:4] == ['mkdir', '-p', str(logdir), '&&']
    assert words[4:6] == [sys.executable, str(ROOT / 'dreamer.py')]
    assert words[6:-3] == ['--configs', 'debug', '--steps', '1e3', '--task', task, '--seed', str(seed), '--logdir', str(logdir)]
    assert words[-3:] == ['>>', str(logdir / 'stdout.log'), '2>&1']
  assert not any(tmp_path.iterdir())  # A dry run writes nothing.


def test_default_grid_is_the_papers_20_tasks_times_5_seeds(tmp_path):
  lines = sweep('--root', tmp_path, '--dry-run').stdout.splitlines()
  assert len(lines) == 100
  assert len({shlex.split(line)[2] for line in lines}) == 100
  assert '/dmc_walker_walk/dreamer/4' in lines[-1] and '/dmc_acrobot_swingup/dreamer/0' in lines[0]


def test_run_that_reached_its_budget_is_skipped_and_status_counts_its_steps(tmp_path):
  # (101 - 1) x 2 + (101 - 1) x 2 = 400 env steps of a 400-step budget.
  fake_run(tmp_path / 'dmc_cartpole_balance' / 'dreamer' / '0', 400, [101, 101])
  result = sweep('--root', tmp_path, '--tasks', 'dmc_cartpole_balance', '--seeds', 0)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == ['sweep: dmc_cartpole_balance seed 0 already reached its budget; skipped.']
  assert not (tmp_path / 'dmc_cartpole_balance' / 'dreamer' / '0' / 'stdout.log').exists()
  assert status(tmp_path, '--tasks', 'dmc_cartpole_balance', '--seeds', 0) == {
      ('dmc_cartpole_balance', 0): (400, '400', '-', 'finished')}
  # A larger budget makes the same run unfinished: (101 - 1) x 2 x 2 = 400 < 1000.
  assert status(tmp_path, '--tasks', 'dmc_cartpole_balance', '--seeds', 0, '--steps', '1e3') == {
      ('dmc_cartpole_balance', 0): (400, '1000', '-', 'unfinished')}


def test_status_reads_running_from_the_lock_and_failed_from_the_sweeps_records(tmp_path):
  logs = {0: [runs.SWEEP_START.format(time='t')],  # Started, no end yet: a killed sweep, unless the lock is held.
          1: [runs.SWEEP_START.format(time='t'), runs.SWEEP_END.format(outcome='exited with code 1', seconds=3)],
          2: [runs.SWEEP_START.format(time='t'), runs.SWEEP_END.format(outcome='exited with code 1', seconds=3),
              runs.SWEEP_START.format(time='t'), runs.SWEEP_END.format(outcome=runs.SWEEP_STOPPED, seconds=3)]}
  for seed, lines in logs.items():
    logdir = tmp_path / 'dmc_cartpole_balance' / 'dreamer' / str(seed)
    fake_run(logdir, 400, [101])
    (logdir / 'stdout.log').write_text('\n'.join(lines) + '\n')
  table = status(tmp_path, '--tasks', 'dmc_cartpole_balance', '--seeds', 0, 1, 2, 3)
  assert [table['dmc_cartpole_balance', seed][3] for seed in range(4)] == ['unfinished', 'failed', 'unfinished', 'not started']
  assert table['dmc_cartpole_balance', 1][:2] == (200, '400')
  # A live process holding seed 0's lock, as dreamer.py does, makes it running.
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import runs, sys, time; runs.lock_logdir(sys.argv[1]); print("locked", flush=True); time.sleep(600)',
       str(tmp_path / 'dmc_cartpole_balance' / 'dreamer' / '0')], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    table = status(tmp_path, '--tasks', 'dmc_cartpole_balance', '--seeds', 0, 1)
    assert [table['dmc_cartpole_balance', seed][3] for seed in range(2)] == ['running', 'failed']
  finally:
    holder.kill()
    holder.wait()


@pytest.mark.parametrize('flags, message', [
    (['--stepz', '5'], 'dreamer.py does not know --stepz 5; `python dreamer.py --help` lists its flags.'),
    (['--steps', '0'], '--steps for dreamer.py must be positive, got 0.'),
    (['--steps', '1.5e3x'], "dreamer.py would reject argument --steps: invalid to_int value: '1.5e3x'."),
    (['--batch_noise', 'sharedd'], "dreamer.py would reject argument --batch_noise: invalid choice: 'sharedd'"),
    (['--configs', 'debugg'], "dreamer.py would reject argument --configs: invalid choice: 'debugg'"),
    (['--seed', '3'], '--seed is set by the sweep for each run; use --tasks, --seeds and --root instead.'),
], ids=['misspelt', 'zero_steps', 'bad_number', 'bad_choice', 'bad_preset', 'own_flag'])
def test_flags_dreamer_would_reject_stop_the_sweep_before_anything_starts(tmp_path, flags, message):
  result = sweep('--root', tmp_path / 'root', '--tasks', 'dmc_cartpole_balance', '--seeds', 0, *flags)
  assert result.returncode == 2 and message in result.stderr, result.stderr
  assert 'Traceback' not in result.stderr and result.stdout == ''
  assert not (tmp_path / 'root').exists()  # Nothing started.


def test_status_of_a_missing_root_is_an_error_and_shows_the_budget_the_flags_give(tmp_path):
  result = sweep('--root', tmp_path / 'nowhere', '--status')
  assert result.returncode == 2 and result.stdout == ''
  assert f'--root {tmp_path / "nowhere"} does not exist, so no run has started there' in result.stderr
  # Not started: the budget of the flags (a preset's), else dreamer.py's default.
  assert status(tmp_path, '--tasks', 'dmc_cartpole_balance', '--seeds', 0, '--configs', 'debug') == {
      ('dmc_cartpole_balance', 0): (0, '800', '-', 'not started')}
  assert status(tmp_path, '--tasks', 'dmc_cartpole_balance', '--seeds', 0) == {
      ('dmc_cartpole_balance', 0): (0, '5000000', '-', 'not started')}


def test_status_into_a_closed_pipe_ends_quietly(tmp_path):
  process = subprocess.Popen([sys.executable, str(SCRIPT), '--root', str(tmp_path), '--status'],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  process.stdout.close()  # As `| head` does once it has its lines.
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == 0 and stderr == b'', stderr.decode()


def test_bad_task_and_jobs_are_one_line_errors_with_exit_code_2(tmp_path):
  result = sweep('--root', tmp_path, '--tasks', 'dmc_walker_fly', '--dry-run')
  assert result.returncode == 2 and "Unknown task 'dmc_walker_fly'" in result.stderr
  result = sweep('--root', tmp_path, '--jobs', 0)
  assert result.returncode == 2 and '--jobs must be at least 1, got 0.' in result.stderr


def test_two_job_debug_sweep_finishes_beside_a_failing_run(tmp_path):
  # Seed 2's logdir holds a run with another action repeat: dreamer.py refuses it (exit 2).
  broken = tmp_path / 'dmc_cartpole_balance' / 'dreamer' / '2'
  broken.mkdir(parents=True)
  (broken / 'config.json').write_text(json.dumps(dict(task='dmc_cartpole_balance', action_repeat=4)))
  result = sweep('--root', tmp_path, '--tasks', 'dmc_cartpole_balance', '--seeds', 0, 1, 2, '--jobs', 2, *DEBUG,
                 timeout=900)
  assert result.returncode == 1, result.stdout + result.stderr
  assert 'sweep: 1 runs failed: dmc_cartpole_balance seed 2' in result.stdout
  assert 'holds a run with --action_repeat 4' in (broken / 'stdout.log').read_text()
  table = status(tmp_path, '--tasks', 'dmc_cartpole_balance', '--seeds', 0, 1, 2)
  for seed in (0, 1):
    steps, budget, last, state = table['dmc_cartpole_balance', seed]
    assert (steps, budget, state) == (400, '400', 'finished')
    logdir = tmp_path / 'dmc_cartpole_balance' / 'dreamer' / str(seed)
    returns = [row['test/return'] for row in map(json.loads, (logdir / 'metrics.jsonl').read_text().splitlines()) if 'test/return' in row]
    assert last == f'{returns[-1]:.1f}'
    assert (logdir / 'stdout.log').read_text().splitlines()[-1].startswith('sweep: dreamer.py exited with code 0 after')
  # Its config.json has no budget, nor do the flags: dreamer.py's default.
  assert table['dmc_cartpole_balance', 2] == (0, '5000000', '-', 'failed')
  machine = runs.sweep_machine(tmp_path / 'dmc_cartpole_balance' / 'dreamer' / '0')  # Recorded at each start.
  assert machine['cores'] == os.cpu_count() and machine['device'] is None and 'numpy' in machine['packages']


def test_ctrl_c_stops_the_run_and_leaves_it_resumable(tmp_path):
  process = subprocess.Popen([sys.executable, str(SCRIPT), '--root', str(tmp_path), '--tasks', 'dmc_cartpole_balance',
                              '--seeds', '0', *DEBUG], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  logdir = tmp_path / 'dmc_cartpole_balance' / 'dreamer' / '0'
  deadline = time.time() + 300
  while not (logdir / 'episodes').exists() and time.time() < deadline:  # Prefill has started.
    time.sleep(0.5)
  process.send_signal(signal.SIGINT)
  output, _ = process.communicate(timeout=120)
  assert process.returncode == 130, output
  assert 'run the same command again to resume' in output
  assert (logdir / 'stdout.log').read_text().splitlines()[-1].startswith('sweep: dreamer.py was stopped by the sweep after')
  assert status(tmp_path, '--tasks', 'dmc_cartpole_balance', '--seeds', 0)['dmc_cartpole_balance', 0][3] == 'unfinished'


def test_a_run_kept_without_its_episodes_counts_the_steps_its_metrics_logged(tmp_path):
  # The small files of results/: config.json and metrics.jsonl, no episodes folder.
  logdir = tmp_path / 'dmc_cartpole_balance' / 'dreamer' / '0'
  logdir.mkdir(parents=True)
  (logdir / 'config.json').write_text(json.dumps(dict(steps=6000, action_repeat=2, task='dmc_cartpole_balance')))
  rows = [dict(step=5000, **{'test/return': 136.0}), dict(step=6000, **{'train/return': 200.0}), {'note': 'no step'}]
  (logdir / 'metrics.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in rows))
  assert runs.env_steps(logdir) == 6000
  assert status(tmp_path, '--tasks', 'dmc_cartpole_balance', '--seeds', 0) == {
      ('dmc_cartpole_balance', 0): (6000, '6000', '136.0', 'finished')}
