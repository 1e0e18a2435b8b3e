"""Crash safety, exact resume and determinism (runs the real command line)."""

import json
import pathlib
import random
import signal
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

import tools

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEBUG = [sys.executable, str(ROOT / 'dreamer.py'), '--configs', 'debug', '--task', 'dmc_cartpole_balance']


def test_atomic_write_killed_midway_leaves_no_partial_file(tmp_path):
  script = textwrap.dedent(f'''
      import os, signal, sys
      sys.path.insert(0, {str(ROOT)!r})
      import tools
      def write(f):
        f.write(b'half of an episode')
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
      tools.atomic_write({str(tmp_path / 'episode-1-10.npz')!r}, write)
  ''')
  result = subprocess.run([sys.executable, '-c', script])
  assert result.returncode == -signal.SIGKILL
  assert not list(tmp_path.glob('*.npz'))
  episodes = tools.Episodes(tmp_path)
  episodes.update()  # The leftover temporary file is not an episode.
  assert not episodes.episodes


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
  variable = tf.Variable(1.0)
  checkpoints = tools.Checkpoints(tmp_path, dict(v=variable), keep=2)
  checkpoints.save()
  variable.assign(2.0)
  checkpoints.save()
  variable.assign(3.0)
  latest = checkpoints.save()
  assert [f.name for f in checkpoints.saved()] == ['ckpt-2', 'ckpt-3']
  for filename in latest.iterdir():
    filename.write_bytes(filename.read_bytes()[:10])
  variable.assign(0.0)
  with pytest.warns(UserWarning, match='ckpt-3 cannot be restored'):
    assert checkpoints.restore().name == 'ckpt-2'
  assert float(variable) == 2.0


def test_checkpoints_ignore_files_that_are_not_numbered_folders(tmp_path):
  variable = tf.Variable(1.0)
  checkpoints = tools.Checkpoints(tmp_path, dict(v=variable), keep=2)
  (tmp_path / 'ckpt-7.index').write_text('another format')
  (tmp_path / 'ckpt-x').mkdir()
  assert checkpoints.save().name == 'ckpt-1'
  assert [f.name for f in checkpoints.saved()] == ['ckpt-1']


def test_checkpoint_restore_with_none_saved_returns_none(tmp_path):
  assert tools.Checkpoints(tmp_path, dict(v=tf.Variable(1.0)), keep=2).restore() is None


def test_checkpoint_from_before_a_counter_existed_restores_and_the_counter_keeps_its_value(tmp_path):
  old = tools.Checkpoints(tmp_path, dict(v=tf.Variable(5.0)), keep=2)
  old.save()
  variable, counter = tf.Variable(0.0), tf.Variable(-1, dtype=tf.int64)
  assert tools.Checkpoints(tmp_path, dict(v=variable, step=counter), keep=2, optional=['step']).restore().name == 'ckpt-1'
  assert float(variable) == 5.0 and int(counter) == -1
  # A required object missing from every checkpoint: nothing is restored.
  with pytest.warns(UserWarning, match='ckpt-1 cannot be restored'):
    assert tools.Checkpoints(tmp_path, dict(v=variable, w=tf.Variable(1.0)), keep=2).restore() is None


def metrics(logdir):
  return [json.loads(line) for line in (logdir / 'metrics.jsonl').read_text().splitlines()]


def test_killed_at_random_moments_run_resumes_to_the_end(tmp_path):
  logdir = tmp_path / 'run'
  command = DEBUG + ['--logdir', str(logdir), '--steps', '1200', '--checkpoints', '2']
  rng = random.Random(0)
  outputs = []
  for attempt in range(10):  # SIGKILL at random moments: start-up, prefill, training, writes.
    outputs.append(tmp_path / f'attempt{attempt}.log')
    with open(outputs[-1], 'w') as log:
      process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
      try:
        process.wait(rng.uniform(5, 35))
      except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
    for filename in (logdir / 'episodes').glob('*.npz'):
      tools.load_episode(filename)  # Raises on a partial or corrupt file.
  final = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
  logs = [f.read_text() for f in outputs] + [final.stdout]
  assert sum('Resumed from' in log for log in logs) >= 3
  assert sum('Prefill' in log for log in logs) <= 3  # Only until the prefill finished.
  assert 'Prefill' not in final.stdout
  files = list((logdir / 'episodes').glob('*.npz'))
  assert tools.count_steps(logdir / 'episodes', 2) == 1200 == 100 * len(files)
  assert not [f for f in (logdir / 'checkpoints').iterdir() if not f.name.startswith('ckpt-')]
  assert len(list((logdir / 'checkpoints').iterdir())) <= 2
  updates = [row['train/updates'] for row in metrics(logdir) if 'train/updates' in row]
  assert updates[-1] >= 5 + 3 * 4  # Pretrain, then train_steps per remaining phase.


def test_deterministic_runs_repeat_exactly_and_seeds_differ(tmp_path):
  runs = {}
  for name, seed in (('a', 0), ('b', 0), ('c', 1)):
    logdir = tmp_path / name
    flags = ['--logdir', str(logdir), '--steps', '600', '--deterministic', 'True', '--seed', str(seed)]
    result = subprocess.run(DEBUG + flags, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # Wall-clock speed and the ETA from it are the values that cannot repeat.
    runs[name] = [{k: v for k, v in row.items() if k not in ('fps', 'eta')} for row in metrics(logdir)]
  assert len(runs['a']) >= 3
  assert runs['a'] == runs['b']
  assert runs['a'] != runs['c']
