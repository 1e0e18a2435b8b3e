"""One writer per logdir: the lock in runs.py and the command line's use of it."""

import concurrent.futures
import datetime
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import runs
import storage

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEBUG = [sys.executable, str(ROOT / 'dreamer.py'), '--configs', 'debug', '--task', 'dmc_cartpole_balance', '--log_images', 'False']


def start_holder(logdir, then='sys.stdin.read()'):
  """A process that takes the lock, says so, then runs `then` (by default: waits
  for its stdin to close)."""
  script = textwrap.dedent(f'''
      import sys
      sys.path.insert(0, {str(ROOT)!r})
      import runs
      print(runs.lock_logdir({str(logdir)!r}), flush=True)
      {then}
  ''')
  process = subprocess.Popen([sys.executable, '-c', script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  assert process.stdout.readline().strip() == 'None'  # Taken, and no dead holder's record found.
  return process


def record(logdir):
  return json.loads((logdir / runs.LOCK_FILE).read_text())


def test_live_holder_is_reported_and_refuses_a_second_writer(tmp_path):
  assert runs.lock_holder(tmp_path) is None  # No lock file yet.
  before = datetime.datetime.now().astimezone().replace(microsecond=0)
  holder = start_holder(tmp_path)
  try:
    found = runs.lock_holder(tmp_path)
    assert found['pid'] == holder.pid and found['host'] == socket.gethostname()
    assert before <= datetime.datetime.fromisoformat(found['since']) <= datetime.datetime.now().astimezone()
    assert found == record(tmp_path)
    with pytest.raises(runs.LogdirInUse, match=f'in use by process {holder.pid} on host {socket.gethostname()}'):
      runs.lock_logdir(tmp_path, patience=0.2)
    assert record(tmp_path)['pid'] == holder.pid  # The refused start did not touch the record.
  finally:
    holder.stdin.close()
    holder.wait()


def test_lock_of_a_killed_holder_is_free_and_taken_over_with_its_record(tmp_path):
  holder = start_holder(tmp_path)
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  assert record(tmp_path)['pid'] == holder.pid  # Its record stays behind...
  assert runs.lock_holder(tmp_path) is None  # ...but nothing holds the lock.
  stale = runs.lock_logdir(tmp_path)
  assert stale['pid'] == holder.pid and stale['host'] == socket.gethostname()
  assert record(tmp_path)['pid'] == os.getpid()
  assert runs.lock_logdir(tmp_path) is None  # This process holds it already.
  assert runs.lock_holder(tmp_path)['pid'] == os.getpid()


def test_normal_exit_leaves_no_record_so_the_next_start_does_not_warn(tmp_path):
  holder = start_holder(tmp_path, then='sys.exit(3)')
  assert holder.wait() == 3
  assert (tmp_path / runs.LOCK_FILE).read_text() == ''
  assert runs.lock_holder(tmp_path) is None
  assert runs.lock_logdir(tmp_path) is None


def test_start_waits_out_a_readers_probe(tmp_path):
  """A reader (the sweep's --status) holds a shared lock for an instant; a start
  that meets it retries within its patience instead of giving up."""
  probe = subprocess.Popen([sys.executable, '-c', textwrap.dedent(f'''
      import fcntl, os, sys
      fd = os.open({str(tmp_path / runs.LOCK_FILE)!r}, os.O_RDONLY | os.O_CREAT)
      fcntl.flock(fd, fcntl.LOCK_SH)
      print('probing', flush=True)
      sys.stdin.read()
  ''')], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  assert probe.stdout.readline().strip() == 'probing'
  with pytest.raises(runs.LogdirInUse, match='in use by a process that has not recorded itself yet'):
    runs.lock_logdir(tmp_path, patience=0)
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    start = pool.submit(runs.lock_logdir, tmp_path, patience=600)
    probe.stdin.close()  # The probe ends.
    assert start.result() is None
  probe.wait()
  assert record(tmp_path)['pid'] == os.getpid()


def test_traceback_of_an_error_only_with_dreamer_traceback_set(tmp_path):
  holder = start_holder(tmp_path)
  try:
    command = DEBUG + ['--logdir', str(tmp_path)]
    plain = subprocess.run(command, capture_output=True, text=True, timeout=600)
    shown = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, 'DREAMER_TRACEBACK': '1'})
  finally:
    holder.stdin.close()
    holder.wait()
  assert plain.returncode == 2 and 'Traceback' not in plain.stderr
  assert plain.stderr.strip().splitlines()[-1].startswith(f'Error: {tmp_path} is in use by process {holder.pid} ')
  assert shown.returncode == 1
  assert 'Traceback (most recent call last)' in shown.stderr and 'runs.LogdirInUse' in shown.stderr


def test_two_starts_on_one_logdir_one_trains_and_a_killed_holder_is_taken_over(tmp_path):
  logdir = tmp_path / 'run'
  command = DEBUG + ['--logdir', str(logdir)]
  starts = [subprocess.Popen(command + ['--steps', '400'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outputs = {process.pid: process.communicate(timeout=600) for process in starts}
  (winner,) = [p for p in starts if p.returncode == 0]
  (loser,) = [p for p in starts if p.returncode != 0]
  assert loser.returncode == 2, outputs[loser.pid][1][-3000:]
  stdout, stderr = outputs[loser.pid]
  assert stdout == ''  # Stopped before any work.
  # The last line, after TensorFlow's own start-up notices.
  assert stderr.strip().splitlines()[-1] == (
      f'Error: {logdir} is in use by process {winner.pid} on host {socket.gethostname()} '
      f'(since {record_since(stderr)}); wait for it to end, stop it, or use another --logdir.')
  assert 'Traceback' not in stderr
  assert outputs[winner.pid][0].count('Prefill dataset with') == 1
  rows = [json.loads(line) for line in (logdir / 'metrics.jsonl').read_text().splitlines()]
  assert [row['step'] for row in rows if 'test/return' in row] == [200]  # One run's evaluation.
  assert runs.count_steps(logdir / 'episodes', 2) == 400

  # A holder killed mid-run leaves its record; the next start takes over and resumes.
  holder = subprocess.Popen(command + ['--steps', '600'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  while runs.count_steps(logdir / 'episodes', 2) <= 400:  # Until it has collected an episode.
    assert holder.poll() is None
    time.sleep(0.2)
  assert runs.lock_holder(logdir)['pid'] == holder.pid  # What the sweep's --status reads.
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  assert runs.lock_holder(logdir) is None and record(logdir)['pid'] == holder.pid
  final = subprocess.run(command + ['--steps', '600'], capture_output=True, text=True, timeout=600)
  assert final.returncode == 0, final.stderr[-3000:]
  warnings = [line for line in final.stderr.splitlines() if line.startswith('Warning: took over')]
  assert warnings == [f'Warning: took over the lock of {logdir} from process {holder.pid} on host {socket.gethostname()} '
                      f'(since {record_since(warnings[0])}), which is no longer running.']
  assert 'Resumed from' in final.stdout and 'Prefill' not in final.stdout
  for filename in (logdir / 'episodes').glob('*.npz'):
    storage.load_episode(filename)
  assert runs.count_steps(logdir / 'episodes', 2) == 600
  assert (logdir / runs.LOCK_FILE).read_text() == ''  # Its normal exit cleared the record.


def record_since(line):
  return line.split('(since ')[1].split(')')[0]
