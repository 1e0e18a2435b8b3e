"""scripts/benchmark.py: a tiny run of its debug-config parts, and its FLOP formula."""

import importlib.util
import json
import pathlib
import subprocess
import sys
import types

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'scripts' / 'benchmark.py'

spec = importlib.util.spec_from_file_location('benchmark', SCRIPT)
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


def test_debug_config_run_writes_positive_numbers(tmp_path):
  out = tmp_path / 'benchmark.json'
  command = [sys.executable, str(SCRIPT), '--parts', 'train,policy,flops,matmul',
             '--train-configs', 'debug', '--steps', '3', '--policy-calls', '10',
             '--matmul-size', '256', '--out', str(out)]
  result = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'train step, median' in result.stdout
  data = json.loads(out.read_text())
  assert {'date', 'tensorflow', 'cpu_model', 'git_commit', 'command'} <= set(data['meta'])
  debug = data['configs']['debug']
  numbers = [
      debug['train']['first_call_s'], debug['train']['median_s'], debug['train']['min_s'],
      debug['train']['max_s'], debug['peak_rss_mb'], debug['allocator_peak_mb'], debug['policy']['median_s'],
      debug['flops']['analytic']['total'], debug['flops']['graph_walk'],
      debug['flops']['profiler_outer_graph'], data['matmul']['gflops'],
      debug['achieved_gflops'], debug['fraction_of_peak'], data['main_process_peak_rss_mb']]
  assert all(isinstance(n, (int, float)) and n > 0 for n in numbers), numbers
  assert debug['train']['count'] == 3
  assert debug['flops']['graph_walk_notes'] == []
  # The two independent counts agree to within the analytic count's x3 rule.
  assert 0.7 < debug['flops']['graph_walk'] / debug['flops']['analytic']['total'] < 1.1


def test_analytic_flop_formula():
  # 8x8x2 -> 4x4 kernel, stride 2, VALID -> 3x3x3: 9 pixels x 3 channels x (4*4*2) MACs.
  assert benchmark.conv_flops(3, 4, 2, 3) == 2 * 9 * 3 * 32 == 1728
  # The transposed conv back, 3x3x3 -> 8x8x2: 9 pixels x 3 channels scatter 4*4*2 each.
  assert benchmark.deconv_flops(3, 4, 3, 2) == 1728
  # The encoder's first layer: 64x64x3 -> 31x31x32.
  assert benchmark.conv_flops(31, 4, 3, 32) == 2 * 961 * 16 * 3 * 32 == 2_952_192
  assert benchmark.dense_flops(5, 7) == 70
  assert benchmark.mlp_flops(4, 8, 2, 1) == 2 * (4 * 8 + 8 * 8 + 8 * 1)
  paper = types.SimpleNamespace(
      cnn_depth=32, stoch_size=30, deter_size=200, num_units=400, batch_size=50,
      batch_length=50, horizon=15, pcont=False, behavior='dreamer')
  flops = benchmark.analytic_flops(paper, actions=6)
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
