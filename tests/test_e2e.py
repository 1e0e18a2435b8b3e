"""The command line end to end: real DMC and Atari tasks with the debug preset."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(logdir, *flags, check=True):
  command = [sys.executable, str(ROOT / 'dreamer.py'), '--configs', 'debug', '--task', 'dmc_cartpole_balance', '--logdir', str(logdir), *flags]
  result = subprocess.run(command, capture_output=True, text=True, timeout=600)
  if check:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result


def metrics(logdir):
  return [json.loads(line) for line in (logdir / 'metrics.jsonl').read_text().splitlines()]


def test_debug_run_writes_everything_and_resumes(tmp_path):
  logdir = tmp_path / 'run'
  first = run(logdir, '--steps', '600')
  assert 'Prefill dataset with 200 random env steps.' in first.stdout
  episodes = sorted((logdir / 'episodes').glob('*.npz'))
  # 600 env steps / (100 env steps per episode) = 6 episodes of 51 rows.
  assert len(episodes) == 6 and all(f.name.endswith('-51.npz') for f in episodes)
  with np.load(episodes[0], allow_pickle=False) as data:
    assert data['image'].shape == (51, 64, 64, 3) and data['image'].dtype == np.uint8
    assert data['action'].shape == (51, 1)
  rows = metrics(logdir)
  assert any('train/return' in row for row in rows)
  assert any('test/return' in row for row in rows)
  assert any('train/model_loss' in row for row in rows)
  assert all(np.isfinite(v) for row in rows for v in row.values())
  assert list(logdir.glob('events.out.tfevents.*'))
  # One after each of the 3 training phases (at 200, 400 and the budget 600 env
  # steps), one at the end; the newest 3 are kept.
  assert sorted(f.name for f in (logdir / 'checkpoints').iterdir()) == ['ckpt-2', 'ckpt-3', 'ckpt-4']
  # The last phase trains and evaluates at the budget, a point of the grid
  # prefill + k * eval_every (200 + 400): 5 pretrain updates, then 3 per phase.
  tests = {row['step']: row['train/updates'] for row in rows if 'test/return' in row}
  assert tests == {200: 5, 600: 5 + 2 * 3}
  assert list((logdir / 'videos').glob('test_policy_*.gif'))
  assert list((logdir / 'videos').glob('train_openloop_*.gif'))
  config = json.loads((logdir / 'config.json').read_text())
  assert config['steps'] == 600 and config['batch_size'] == 4

  again = run(logdir, '--steps', '600')
  assert 'already reached its budget of 600 env steps' in again.stdout
  assert metrics(logdir) == rows and sorted(f.name for f in (logdir / 'checkpoints').iterdir()) == ['ckpt-2', 'ckpt-3', 'ckpt-4']

  second = run(logdir, '--steps', '800')
  assert 'Prefill' not in second.stdout
  assert 'Resumed from' in second.stdout and 'at step 600' in second.stdout
  assert len(list((logdir / 'episodes').glob('*.npz'))) == 8
  updates = [row['train/updates'] for row in metrics(logdir) if 'train/updates' in row]
  assert updates == sorted(updates) and updates[-1] > updates[0]
  # The published grid: prefill + k * eval_every (200, 600), each after that
  # step's training phase (pretrain 5, then 3 per phase of 200 env steps).
  tests = {row['step']: row for row in metrics(logdir) if 'test/return' in row}
  assert sorted(tests) == [200, 600]
  assert [tests[s]['train/updates'] for s in (200, 600)] == [5, 5 + 2 * 3]

  # Evaluation mode: the saved settings, the newest checkpoint, nothing added to the run.
  before = (sorted((logdir / 'episodes').iterdir()), (logdir / 'metrics.jsonl').read_text())
  command = [sys.executable, str(ROOT / 'dreamer.py'), '--logdir', str(logdir), '--mode', 'eval', '--eval_episodes', '2']
  evaluation = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert evaluation.returncode == 0, evaluation.stderr[-3000:]
  result = json.loads((logdir / 'eval.json').read_text())
  assert len(result['returns']) == 2 and all(np.isfinite(result['returns']))
  assert result['mean'] == pytest.approx(np.mean(result['returns'])) and result['std'] == pytest.approx(np.std(result['returns']))
  assert result['step'] == 800 and (logdir / 'eval.gif').read_bytes()[:6] == b'GIF89a'
  assert f'{result["mean"]:.1f}' in evaluation.stdout
  assert (sorted((logdir / 'episodes').iterdir()), (logdir / 'metrics.jsonl').read_text()) == before
  assert json.loads((logdir / 'config.json').read_text())['commit']


def test_eval_mode_without_checkpoint_is_one_clear_error_with_exit_code_2(tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps({'task': 'dmc_cartpole_balance'}))
  command = [sys.executable, str(ROOT / 'dreamer.py'), '--logdir', str(tmp_path), '--mode', 'eval']
  result = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert result.returncode == 2
  assert 'holds no checkpoint to evaluate yet; train it first' in result.stderr


def test_video_every_sets_which_gifs_are_written_to_videos_only(tmp_path):
  logdir = tmp_path / 'run'
  run(logdir, '--steps', '800', '--video_every', '200')
  # Phases at 200, 400, 600 and the budget 800 env steps, one video period each
  # ((step - prefill) // 200): an open-loop video in each, a policy video with each
  # evaluation (200 and 600).
  names = sorted(f.name for f in (logdir / 'videos').iterdir())
  assert names == ['test_policy_200.gif', 'test_policy_600.gif', 'train_openloop_200.gif', 'train_openloop_400.gif', 'train_openloop_600.gif', 'train_openloop_800.gif']
  import tensorflow as tf
  values = [v for f in logdir.glob('events.out.tfevents.*') for e in tf.compat.v1.train.summary_iterator(str(f)) for v in e.summary.value]
  assert values and not any(v.HasField('image') for v in values)
  assert {v.metadata.plugin_data.plugin_name for v in values if v.HasField('metadata')} == {'scalars'}


def test_two_process_envs_each_write_episodes_and_steps_add_up(tmp_path):
  logdir = tmp_path / 'run'
  run(logdir, '--steps', '600', '--envs', '2', '--log_images', 'False')
  episodes = list((logdir / 'episodes').glob('*.npz'))
  # Prefill 200 (one episode per env), then 200 env steps per phase over 2 envs.
  assert len(episodes) == 6
  rows = metrics(logdir)
  assert rows[-1]['step'] == 600 and rows[-1]['train/episodes'] == 6
  returns = {round(row['train/return'], 3) for row in rows if 'train/return' in row}
  assert len(returns) > 1  # Different seeds: the two envs do not repeat each other.


def test_mirrored_strategy_run_trains_and_evaluates(tmp_path):
  logdir = tmp_path / 'run'
  run(logdir, '--steps', '400', '--strategy', 'mirrored')
  rows = metrics(logdir)
  assert any('train/model_loss' in row for row in rows)
  assert any('test/return' in row for row in rows)
  assert list((logdir / 'videos').glob('train_openloop_*.gif'))


@pytest.mark.parametrize('flags, message', [
    (['--task', 'dmc_walker_fly'], 'dmc_walker_walk'),
    (['--batch_length', '60'], 'batch_length'),
    (['--batch_size', '0'], '--batch_size must be positive'),
    (['--steps', 'many'], "invalid to_int value: 'many'"),
    (['--pcont', 'yes'], "invalid to_bool value: 'yes'"),
    (['--configs', 'tiny'], "invalid choice: 'tiny'"),
    (['--behavior', 'plan'], "invalid choice: 'plan'"),
    (['--planet_top', '2000'], '--planet_top 2000 exceeds --planet_candidates 1000'),
    (['--no_such_flag', '1'], 'unrecognized arguments: --no_such_flag'),
])
def test_bad_input_gives_one_clear_error_and_exit_code_2(tmp_path, flags, message):
  result = run(tmp_path / 'run', *flags, check=False)
  assert result.returncode == 2
  assert message in result.stderr
  assert not (tmp_path / 'run').exists()


@pytest.mark.skipif(importlib.util.find_spec('ale_py') is None, reason='Atari needs pip install -r requirements-atari.txt')
def test_atari_debug_run_trains_with_pcont_one_hot_actions_and_life_loss_terminals(tmp_path):
  logdir = tmp_path / 'run'
  # Debug's 100 env steps are 25 agent steps at action repeat 4, about one
  # Breakout life: 400 let a random policy lose one.
  run(logdir, '--configs', 'atari', 'debug', '--task', 'atari_breakout', '--time_limit', '400', '--steps', '400')
  config = json.loads((logdir / 'config.json').read_text())
  assert (config['pcont'], config['action_repeat'], config['kl_scale'], config['action_dist']) == (True, 4, 0.1, 'onehot')
  episodes = [dict(np.load(f)) for f in sorted((logdir / 'episodes').glob('*.npz'))]
  for episode in episodes:
    assert episode['image'].shape[1:] == (64, 64, 3) and episode['action'].shape[1:] == (4,)
    actions = episode['action'][1:]  # One-hot after the zero first row.
    np.testing.assert_allclose(actions, np.eye(4)[actions.argmax(1)], atol=1e-6)
    np.testing.assert_array_equal(episode['discount'][:-1], 1)
  lives_lost = [e for e in episodes if e['discount'][-1] == 0]
  assert lives_lost and all(len(e['reward']) < 101 for e in lives_lost)
  rows = metrics(logdir)
  losses = [row['train/pcont_loss'] for row in rows if 'train/pcont_loss' in row]
  assert losses and all(np.isfinite(v) for row in rows for v in row.values())
  assert any('test/return' in row for row in rows)


def test_atari_task_without_ale_py_is_an_error_with_exit_code_2(tmp_path):
  # This interpreter cannot import ale_py, as if it were not installed.
  code = ('import runpy, sys; sys.modules["ale_py"] = None; sys.argv[0] = "dreamer.py"; '
          'runpy.run_path("dreamer.py", run_name="__main__")')
  command = [sys.executable, '-c', code, '--task', 'atari_pong', '--logdir', str(tmp_path / 'run')]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert 'pip install -r requirements-atari.txt' in result.stderr.splitlines()[-1]
  assert not (tmp_path / 'run').exists()


def test_unwritable_logdir_is_an_error_with_exit_code_2(tmp_path):
  (tmp_path / 'file').write_text('not a folder')
  result = run(tmp_path / 'file' / 'run', check=False)
  assert result.returncode == 2
  assert 'Cannot write to --logdir' in result.stderr


def test_logdir_with_other_model_size_is_an_error_with_exit_code_2(tmp_path):
  logdir = tmp_path / 'run'
  logdir.mkdir()
  (logdir / 'config.json').write_text(json.dumps({'task': 'dmc_cartpole_balance', 'deter_size': 200}))
  result = run(logdir, check=False)
  assert result.returncode == 2
  assert 'holds a run with --deter_size 200' in result.stderr


@pytest.mark.parametrize('flags, losses', [
    (['--behavior', 'planet', '--planet_candidates', '20', '--planet_top', '4', '--planet_iterations', '2', '--planet_horizon', '3'], {'image_loss', 'reward_loss', 'model_loss'}),
    (['--behavior', 'no_value'], {'image_loss', 'reward_loss', 'model_loss', 'actor_loss'}),
    (['--objective', 'contrastive'], {'contrastive_loss', 'reward_loss', 'model_loss', 'actor_loss', 'value_loss'}),
    (['--objective', 'reward'], {'reward_loss', 'model_loss', 'actor_loss', 'value_loss'}),
])
def test_each_variant_completes_a_debug_run_with_finite_losses(tmp_path, flags, losses):
  logdir = tmp_path / 'run'
  run(logdir, '--steps', '400', *flags)
  rows = metrics(logdir)
  logged = {key[len('train/'):] for row in rows for key in row if key.startswith('train/') and key.endswith('_loss')}
  assert logged == losses
  assert all(np.isfinite(v) for row in rows for v in row.values())
  assert any('test/return' in row for row in rows)
  assert bool(list((logdir / 'videos').glob('train_openloop_*.gif'))) == ('image_loss' in losses)
