"""The logger: metrics.jsonl, the console's progress line."""

import json
import types

import pytest

import logger


def test_progress_rate_and_eta_by_hand():
  # 2000 env steps in 250 s: 8 env steps/s; 8000 left to the budget: 1000 s.
  assert logger.progress([(0.0, 0), (50.0, 1000), (250.0, 2000)], 10000) == (8.0, 1000.0)
  assert logger.progress([(0.0, 500), (10.0, 500)], 10000) == (None, None)  # No step timed.
  assert logger.progress([(0.0, 0), (10.0, 100)], 50) == (10.0, 0.0)  # Past the budget.


@pytest.mark.parametrize('seconds, text', [(12, '12s'), (250, '4m 10s'), (3900, '1h 05m'), (183600, '2d 03h'), (0.4, '0s')])
def test_duration_shows_the_two_largest_units(seconds, text):
  assert logger.duration(seconds) == text


def test_logger_progress_over_the_last_five_writes_on_a_synthetic_clock(tmp_path, monkeypatch, capsys):
  clock = types.SimpleNamespace(now=0.0)
  monkeypatch.setattr(logger.time, 'time', lambda: clock.now)
  log = logger.Logger(tmp_path, 0, 100000)  # t = 0 at step 0.
  for k, now in enumerate([100.0, 300.0, 400.0, 500.0, 700.0, 800.0], 1):  # Steps 1000..6000.
    clock.now = now
    log.step = 1000 * k
    log.scalar('train/return', 10.0 * k)
    log.scalar('train/kl', 1.0)
    log.write(7 * k)
  # The last write sees the points of steps 1000..6000: 5000 env steps in 700 s,
  # 7.142857 env steps/s; 94000 left: 13160 s = 3h 39m 20s.
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert rows[0]['fps'] == pytest.approx(10.0) and rows[0]['eta'] == pytest.approx(9900.0)
  last = rows[-1]
  assert last['step'] == 6000 and last['budget'] == 100000 and last['updates'] == 42
  assert last['fps'] == pytest.approx(5000 / 700) and last['eta'] == pytest.approx(13160.0)
  assert last['train/return'] == 60.0 and last['train/kl'] == 1.0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 6
  assert lines[-1] == '[6000/100000 env steps, 6.0%] 42 updates, 7.1 env steps/s, ETA 3h 39m | train/return 60'
