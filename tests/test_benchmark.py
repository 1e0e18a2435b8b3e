"""scripts/benchmark.py: a tiny run of its debug-config parts; scripts/flop_count.py:
its FLOP formula and graph walk."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'scripts' / 'benchmark.py'

spec = importlib.util.spec_from_file_location('benchmark', SCRIPT)
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)
sys.path.insert(0, str(ROOT / 'scripts'))
import flop_count  # noqa: E402 (needs the path above)


def test_debug_config_run_writes_positive_numbers(tmp_path):
  out = tmp_path / 'benchmark.json'
  command = [sys.executable, str(SCRIPT), '--parts', 'train,breakdown,policy,flops,matmul',
             '--train-configs', 'debug', '--steps', '3', '--policy-calls', '10',
             '--matmul-size', '256', '--out', str(out)]
  result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'train step, median' in result.stdout and 'step parts' in result.stdout
  data = json.loads(out.read_text())
  assert {'date', 'tensorflow', 'cpu_model', 'cores', 'isa', 'machine_kind', 'git_commit', 'command'} <= set(data['meta'])
  assert set(data['meta']['isa']) == set(benchmark.ISA_FEATURES)
  debug = data['configs']['debug/32']
  assert debug['precision'] == '32' and debug['finite'] and all(debug['finite'].values())
  numbers = [
      debug['train']['first_call_s'], debug['train']['trace_s'], debug['train']['first_call_faulted_mib'],
      data['first_touch']['fresh_s'], data['first_touch']['reused_s'], debug['train']['median_s'], debug['train']['min_s'],
      debug['train']['max_s'], debug['peak_rss_mb'], debug['policy']['median_s'],
      debug['flops']['analytic']['total'], debug['flops']['graph_walk'],
      debug['flops']['profiler_outer_graph'], data['matmul']['32']['gflops'], data['matmul']['bf16']['gflops'],
      debug['achieved_gflops'], debug['fraction_of_peak'], debug['fraction_of_peak_best'],
      debug['ops_per_step'], debug['breakdown']['input_pipeline_s'], data['main_process_peak_rss_mb']]
  assert all(isinstance(n, (int, float)) and n > 0 for n in numbers), numbers
  # TF's CPU allocator keeps statistics on some machines only; the table then says 'not counted'.
  assert debug['allocator_peak_mb'] is None or debug['allocator_peak_mb'] > 0
  assert debug['train']['count'] == 3 and debug['train']['trace_s'] < debug['train']['first_call_s']
  assert debug['flops']['graph_walk_notes'] == []
  # The two independent counts agree to within the analytic count's x3 rule.
  assert 0.7 < debug['flops']['graph_walk'] / debug['flops']['analytic']['total'] < 1.1
  parts = debug['breakdown']
  assert all(t > 0 for t in parts['measured_s'].values()), parts['measured_s']
  assert pytest.approx(sum(parts['seconds'].values())) == parts['step_s']
  ops = parts['ops']
  # A backward pass adds ops to its forward pass; the whole step holds every part.
  assert ops['world_model_forward_backward'] > ops['world_model_forward'] > 0
  assert ops['behavior_forward_backward'] > ops['imagination_forward'] + ops['behavior_losses_forward']
  assert ops['train_step'] > ops['world_model_forward_backward'] + ops['behavior_forward_backward']
  # Every convolution, with the shapes ALGORITHM 2.2-2.3's layers give at cnn_depth 4.
  layers = parts['conv_layers']
  assert {name: layer['shape'] for name, layer in layers.items()} == {
      'encoder h0': '64x64x3 -> 31x31x4', 'encoder h1': '31x31x4 -> 14x14x8',
      'encoder h2': '14x14x8 -> 6x6x16', 'encoder h3': '6x6x16 -> 2x2x32',
      'decoder h2': '1x1x128 -> 5x5x16', 'decoder h3': '5x5x16 -> 13x13x8',
      'decoder h4': '13x13x8 -> 30x30x4', 'decoder h5': '30x30x4 -> 64x64x3'}
  assert [layer['kernel'] for layer in layers.values()] == [4, 4, 4, 4, 5, 5, 6, 6]
  assert all(layer['seconds'] > 0 and layer['gflops'] > 0 for layer in layers.values())
  # Forward plus both backward products of the last layer, 40 frames (batch 4 x 10):
  # every input pixel and channel adds a 6 x 6 x 3 patch.
  last = layers['decoder h5']
  assert last['gflops'] * last['seconds'] == pytest.approx(3 * 40 * 2 * 30 * 30 * 4 * 36 * 3 / 1e9)


def test_train_part_runs_without_onednn_whose_allocator_keeps_the_only_statistics(tmp_path):
  out = tmp_path / 'benchmark.json'
  command = [sys.executable, str(SCRIPT), '--parts', 'train', '--train-configs', 'debug', '--steps', '1', '--out', str(out)]
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS='0')
  result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  debug = json.loads(out.read_text())['configs']['debug/32']
  assert debug['allocator_peak_mb'] is None and debug['train']['median_s'] > 0
  assert 'tensors' in result.stdout and 'not counted' in result.stdout


def test_conv_layers_run_in_the_precision_of_the_agent():
  import tf_keras as keras
  from agent import Dreamer
  config = benchmark.make_config('debug', 'bf16')
  keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    layers = benchmark.conv_layers(Dreamer(config, flop_count.ACTIONS), frames=2, rounds=1)
  finally:
    keras.mixed_precision.set_global_policy('float32')
  assert len(layers) == 8 and all(layer['gflops'] > 0 for layer in layers.values())


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile
"""


def test_cpu_info_reads_model_cores_and_matrix_features():
  info = benchmark.cpu_info(CPUINFO)
  assert info['cpu_model'] == 'Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz'
  assert info['cores'] == 2
  assert info['isa'] == dict(avx2=True, avx512f=True, avx512_bf16=True, avx512_fp16=False,
                             amx_tile=True, amx_bf16=True, amx_fp16=False)
  assert benchmark.machine_kind(info) == 'intel-xeon-platinum-8481c-amx'
  # The word boundary: 'amx_bf16' is not read from 'amx_bf16x' or from another field.
  other = benchmark.cpu_info(CPUINFO.replace('amx_bf16 ', 'amx_bf16x '))
  assert not other['isa']['amx_bf16'] and benchmark.machine_kind(other) == 'intel-xeon-platinum-8481c'


def test_machine_kind_of_the_projects_machines():
  kind = lambda model, amx=False: benchmark.machine_kind(dict(cpu_model=model, isa=dict(amx_bf16=amx)))
  assert kind('AMD EPYC') == 'amd-epyc'
  assert kind('AMD EPYC 7B13 64-Core Processor') == 'amd-epyc-7b13'
  assert kind('Intel(R) Xeon(R) Processor', amx=True) == 'intel-xeon-amx'
  assert kind('Intel(R) Xeon(R) Processor') == 'intel-xeon'


def test_fractions_use_the_peak_of_the_runs_precision():
  # 70.5 GFLOP in 0.5 s is 141 GFLOP/s: 70.5% of a 200 GFLOP/s float32 peak.
  achieved, fraction = benchmark.fraction_of_peak(70.5e9, 0.5, 200.0)
  assert achieved == pytest.approx(141.0) and fraction == pytest.approx(0.705)
  peaks = {'32': dict(gflops=200.0), 'bf16': dict(gflops=500.0)}
  run = dict(precision='bf16', train=dict(median_s=0.5, min_s=0.4), flops=dict(analytic=dict(total=70.5e9)),
             breakdown=dict(step_s=0.3))
  benchmark.add_fractions(run, peaks)
  assert run['achieved_gflops'] == pytest.approx(141.0)
  assert run['fraction_of_peak'] == pytest.approx(141.0 / 500)
  assert run['fraction_of_peak_best'] == pytest.approx(70.5 / 0.4 / 500)
  assert run['breakdown']['fraction_of_peak'] == pytest.approx(70.5 / 0.3 / 500)
  # Without a measured peak for its precision, no fraction is made up.
  lone = dict(precision='16', train=dict(median_s=0.5, min_s=0.4), flops=dict(analytic=dict(total=1e9)))
  benchmark.add_fractions(lone, peaks)
  assert 'fraction_of_peak' not in lone
  # A failed child's entry is only its error, and stays so.
  failed = dict(error='RuntimeError: the child failed')
  benchmark.add_fractions(failed, peaks)
  assert failed == dict(error='RuntimeError: the child failed')


def test_graph_walk_counts_loop_bodies_times_their_trips():
  import tensorflow as tf
  a = tf.ones([4, 4])

  def walk(trips):
    fn = tf.function(lambda: tf.scan(lambda x, _: tf.matmul(x, a), tf.range(trips), a))
    return flop_count.graph_walk(fn.get_concrete_function().graph, [])

  # Per trip: 2 * 4^3 FLOPs of the 4x4 matmul and 1 of each of the loop's two scalar
  # counter increments; nothing outside the loop has registered FLOPs.
  assert walk(5)['flops'] == 5 * 130 and walk(10)['flops'] == 10 * 130
  # The ops grow by one body per trip.
  body = walk(6)['ops'] - walk(5)['ops']
  assert body > 1 and walk(10)['ops'] - walk(5)['ops'] == 5 * body


def test_analytic_flop_formula():
  # 8x8x2 -> 4x4 kernel, stride 2, VALID -> 3x3x3: 9 pixels x 3 channels x (4*4*2) MACs.
  assert flop_count.conv_flops(3, 4, 2, 3) == 2 * 9 * 3 * 32 == 1728
  # The transposed conv back, 3x3x3 -> 8x8x2: 9 pixels x 3 channels scatter 4*4*2 each.
  assert flop_count.deconv_flops(3, 4, 3, 2) == 1728
  # The encoder's first layer: 64x64x3 -> 31x31x32.
  assert flop_count.conv_flops(31, 4, 3, 32) == 2 * 961 * 16 * 3 * 32 == 2_952_192
  assert flop_count.dense_flops(5, 7) == 70
  assert flop_count.mlp_flops(4, 8, 2, 1) == 2 * (4 * 8 + 8 * 8 + 8 * 1)
  paper = types.SimpleNamespace(
      cnn_depth=32, stoch_size=30, deter_size=200, num_units=400, batch_size=50,
      batch_length=50, horizon=15, pcont=False, behavior='dreamer')
  flops = flop_count.analytic_flops(paper, actions=6)
  # The estimate: ~0.6 TFLOP of convs, ~0.35 of imagination, ~0.95 in all.
  assert abs(flops['conv'] / 0.6e12 - 1) < 0.05
  assert abs(flops['imagination'] / 0.35e12 - 1) < 0.05
  assert abs((flops['total'] - flops['value_loss']) / 0.95e12 - 1) < 0.05


def test_env_part_times_the_loop_with_both_policies():
  env = benchmark.env_rates(1, 20)
  for policy in ('agent', 'zero'):
    assert env[f'{policy}_policy_steps_per_s'] > 0
    assert 0 < env[f'{policy}_policy_inside_worker_fraction'] <= 1
  assert env['policy_call_in_loop_ms'] > 0 and env['policy_call_back_to_back_ms'] > 0
  assert env['workers'] == 1 and env['many_workers_steps_per_s'] > 0


def test_wake_penalty_times_the_calls_without_the_pause():
  penalty = benchmark.wake_penalty(calls=3, pause=0.05)
  assert set(penalty) == {f'{name}_{when}_us' for name in ('tf_function_call', 'numpy_sum')
                          for when in ('back_to_back', 'after_sleep')}
  assert all(0 < value < 50_000 for value in penalty.values()), penalty  # The 50 ms pause is not counted.
