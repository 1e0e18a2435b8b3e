"""Scaling out: tf.distribute and mixed precision."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from agent import Dreamer, Policy
import configs
import dreamer

ROOT = pathlib.Path(__file__).resolve().parent.parent


def config_for(tmp_path, *flags):
  return configs.parse_args([
      '--logdir', str(tmp_path / 'run'), '--task', 'dmc_cartpole_balance', '--configs', 'debug',
      '--batch_size', '4', '--batch_length', '6', *flags])


def batch_for(config, seed=0):
  rng = np.random.default_rng(seed)
  shape = (config.batch_size, config.batch_length)
  return dict(
      image=rng.integers(0, 256, shape + (64, 64, 3), dtype=np.uint8),
      action=rng.uniform(-1, 1, shape + (2,)).astype(np.float32),
      reward=rng.normal(size=shape).astype(np.float32),
      discount=np.ones(shape, np.float32))


MIRRORED_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']
    from agent import Dreamer
    import distributions
    from test_distribute import config_for, batch_for
    import pathlib
    # Remove sampling noise: replicas draw other random numbers than one device.
    tf.random.normal = lambda shape, mean=0.0, stddev=1.0, dtype=tf.float32, seed=None, name=None: tf.zeros(shape, dtype)
    distributions.SampleDist.sample = lambda self, *args, **kwargs: tf.tanh(self._dist.distribution.distribution.loc)
    config = config_for(pathlib.Path(sys.argv[2]))
    single = Dreamer(config, 2)
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    with strategy.scope():
      mirrored = Dreamer(config, 2)
    for a, b in zip(single.variables, mirrored.variables):
      b.assign(a)
    batch = batch_for(config)
    dataset = tf.data.Dataset.from_tensors(batch).unbatch().batch(config.batch_size)
    results = {}
    for name, agent, data in (
        ('single', single, batch),
        ('mirrored', mirrored, next(iter(strategy.experimental_distribute_dataset(dataset))))):
      metrics = agent.train(data)
      results[name] = dict(
          replicas=agent._strategy.num_replicas_in_sync,
          metrics={k: float(v) for k, v in metrics.items() if k != 'action_ent'},
          weights=[v.numpy().ravel().tolist() for v in agent.trainable_variables])
    print(json.dumps(results))
''')


def test_mirrored_strategy_on_two_devices_matches_single_device_step(tmp_path):
  result = subprocess.run(
      [sys.executable, '-c', MIRRORED_SCRIPT, str(ROOT), str(tmp_path)],
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  results = json.loads(result.stdout.strip().splitlines()[-1])
  single, mirrored = results['single'], results['mirrored']
  assert single['replicas'] == 1 and mirrored['replicas'] == 2
  # The model's gradient norm is mostly the decoder's output bias gradient: each of its
  # 3 channels sums 4 x 6 x 64 x 64 ~ 1e5 per-pixel terms of size ~0.5 that cancel to
  # about 5. Summed in float32 in another order (two half batches, another machine's
  # kernels) a channel may move by up to 1e5 x eps x 0.5 ~ 6e-3, rel ~1e-3; seen: 2e-4.
  tolerance = dict(model_grad_norm=2e-3)
  for name, value in single['metrics'].items():
    assert mirrored['metrics'][name] == pytest.approx(value, rel=tolerance.get(name, 1e-4), abs=1e-5), name
  for a, b in zip(single['weights'], mirrored['weights']):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


@pytest.fixture
def precision_policy():
  yield keras.mixed_precision.set_global_policy
  keras.mixed_precision.set_global_policy('float32')


@pytest.mark.parametrize('precision, policy', [('16', 'mixed_float16'), ('bf16', 'mixed_bfloat16')])
def test_mixed_precision_train_step_has_finite_float32_losses(tmp_path, precision_policy, precision, policy):
  precision_policy(policy)
  config = config_for(tmp_path, '--precision', precision)
  agent = Dreamer(config, 2)
  assert agent.encoder.trainable_variables[0].dtype == tf.float32  # Float32 master weights.
  scales = []
  for _ in range(12):  # float16: the loss scale halves until gradients fit (2^15 at start).
    metrics = agent.train(batch_for(config))
    assert metrics['model_loss'].dtype == tf.float32
    assert all(np.isfinite(float(v)) for k, v in metrics.items() if 'loss' in k), metrics
    scales.append(float(metrics.get('model_loss_scale', 1)))
    if float(metrics['model_skipped']) == 0:
      break
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  assert ('model_loss_scale' in metrics) == (precision == '16')
  assert scales == sorted(scales, reverse=True)
  action, _ = Policy(agent, sample=True, amount=0.3)({'image': batch_for(config)['image'][:, 0]}, np.ones(4, bool), None)
  assert action.dtype == np.float32 and np.isfinite(action).all()


@pytest.mark.parametrize('precision, policy', [('32', 'float32'), ('16', 'mixed_float16')])
def test_injected_inf_gradient_skips_update_and_keeps_weights(tmp_path, precision_policy, precision, policy):
  precision_policy(policy)
  config = config_for(tmp_path, '--precision', precision)
  agent = Dreamer(config, 2)
  world = agent.optimizers()['model'][1]
  before = [v.numpy().copy() for v in world]
  batch = batch_for(config)
  batch['reward'][0, 0] = np.inf  # The reward loss and the world-model gradients become non-finite.
  first = agent.train(batch)
  assert float(first['model_skipped']) == 1.0 and float(first['actor_skipped']) == 0.0
  for b, v in zip(before, world):
    np.testing.assert_array_equal(b, v.numpy())
  if precision == '16':
    second = agent.train(batch)
    assert float(second['model_loss_scale']) == float(first['model_loss_scale']) / 2


def test_batch_not_divisible_by_replicas_stops_before_writing_the_run(tmp_path, monkeypatch):
  monkeypatch.setattr(dreamer, 'setup_devices', lambda config: types.SimpleNamespace(num_replicas_in_sync=2, cluster_resolver=None))
  config = config_for(tmp_path, '--batch_size', '3')
  with pytest.raises(dreamer.RunError, match='--batch_size 3 must be a multiple of the 2 replicas'):
    dreamer.main(config)
  assert not (tmp_path / 'run' / 'config.json').exists()
  assert not (tmp_path / 'run' / 'episodes').exists()


def free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for sock in sockets:
    sock.bind(('127.0.0.1', 0))
  ports = [sock.getsockname()[1] for sock in sockets]
  for sock in sockets:
    sock.close()
  return ports


def test_two_workers_on_localhost_train_in_lockstep_and_keep_their_own_checkpoints(tmp_path):
  cluster = {'worker': [f'127.0.0.1:{port}' for port in free_ports(2)]}
  logdirs = [tmp_path / f'worker{index}' for index in range(2)]
  processes = []
  for index, logdir in enumerate(logdirs):
    env = dict(os.environ, TF_CONFIG=json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': index}}))
    command = [
        sys.executable, str(ROOT / 'dreamer.py'), '--configs', 'debug', '--task', 'dmc_cartpole_balance',
        '--strategy', 'multi_worker', '--logdir', str(logdir), '--steps', '600', '--log_images', 'False']
    with open(tmp_path / f'worker{index}.log', 'w') as log:
      processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
  try:
    codes = [process.wait(timeout=1200) for process in processes]
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  logs = [(tmp_path / f'worker{index}.log').read_text() for index in range(2)]
  assert codes == [0, 0], '\n'.join(log[-3000:] for log in logs)
  # Each worker collected its own data (seed + 10000 x worker index) ...
  returns = [[row['train/return'] for row in metrics(logdir) if 'train/return' in row] for logdir in logdirs]
  assert len(returns[0]) == len(returns[1]) == 3 and returns[0] != returns[1]
  # ... yet the replicas' all-reduced losses and the weights after every phase agree.
  losses = [[row['train/model_loss'] for row in metrics(logdir) if 'train/model_loss' in row] for logdir in logdirs]
  assert len(losses[0]) == 3 and losses[0] == losses[1]
  # One checkpoint after each of the 3 training phases (200, 400 and the budget 600
  # env steps) and one at the end, the newest 3 kept, each worker in its own folder.
  for logdir in logdirs:
    assert sorted(f.name for f in (logdir / 'checkpoints').iterdir()) == ['ckpt-2', 'ckpt-3', 'ckpt-4']
  for name in ('ckpt-2', 'ckpt-3', 'ckpt-4'):
    readers = [tf.train.load_checkpoint(str(logdir / 'checkpoints' / name / 'ckpt')) for logdir in logdirs]
    variables = sorted(readers[0].get_variable_to_shape_map())
    assert variables == sorted(readers[1].get_variable_to_shape_map()) and len(variables) > 100
    for variable in variables:
      np.testing.assert_array_equal(readers[0].get_tensor(variable), readers[1].get_tensor(variable), variable)
  updates = readers[0].get_tensor('agent/updates/.ATTRIBUTES/VARIABLE_VALUE')
  assert updates == 5 + 3 + 3  # Pretrain, then two phases of train_steps.


def metrics(logdir):
  return [json.loads(line) for line in (logdir / 'metrics.jsonl').read_text().splitlines()]
