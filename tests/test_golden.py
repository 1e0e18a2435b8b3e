"""scripts/golden.py and scripts/golden_numpy.py: one debug-config golden file is
written per session; the TF check and the NumPy replay pass on it and fail, naming
the quantity, on perturbed copies."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'scripts'))

import golden  # noqa: E402
import golden_numpy  # noqa: E402

# Runs the NumPy checker and reports whether TensorFlow got imported on the way.
NUMPY_CHECK = '''
import sys
sys.path.insert(0, sys.argv[1])
import golden_numpy
code = golden_numpy.main(sys.argv[2:])
print('tensorflow imported:', 'tensorflow' in sys.modules)
sys.exit(code)
'''


@pytest.fixture(scope='module')
def golden_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('golden') / 'golden.npz'
  # At cnn_depth 16 the decoder's first transposed convolution sums 512 channels, enough
  # for its two implementations (--layer_impl) to round differently.
  flags = ['--configs', 'debug', '--task', 'dmc_cartpole_balance', '--batch_size', '3', '--batch_length', '6', '--cnn_depth', '16']
  assert golden.main(['write', '--out', str(path), *flags]) == 0
  return path


def perturbed(path, tmp_path, key, change):
  """A copy of the golden file with change(array) applied to one array."""
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  arrays[key] = change(arrays[key].copy())
  copy = tmp_path / 'perturbed.npz'
  np.savez(copy, **arrays)
  return copy


def failed_quantities(output):
  """The names on the checker's closing FAIL line."""
  last = output.strip().splitlines()[-1]
  assert last.startswith('FAIL'), output[-2000:]
  return set(last.split(': ', 2)[2].split(', '))


def tf_check(path, capsys):
  code = golden.main(['check', str(path)])
  return code, capsys.readouterr().out


def numpy_check(path):
  result = subprocess.run([sys.executable, '-c', NUMPY_CHECK, str(ROOT / 'scripts'), str(path)],
                          capture_output=True, text=True, timeout=300)
  assert result.stdout.strip().endswith('tensorflow imported: False'), result.stdout[-2000:] + result.stderr[-2000:]
  return result.returncode, result.stdout.strip().rsplit('\n', 1)[0]


def test_check_recomputes_every_stored_quantity_within_tolerance(golden_file, capsys):
  code, output = tf_check(golden_file, capsys)
  assert code == 0, output[-3000:]
  stored = golden_numpy.load(golden_file)
  for name in list(stored['out']) + [f'updated/{k}' for k in stored['updated']]:
    assert f'\n{name} ' in output
  assert {'model_grad_norm', 'actor_grad_norm', 'value_grad_norm', 'kl', 'imagine/returns'} <= set(stored['out'])
  assert set(stored['updated']) == set(stored['weights'])
  assert output.strip().endswith('PASS: every quantity within float32 tolerance.')


def test_check_fails_naming_the_outputs_of_a_changed_weight(golden_file, tmp_path, capsys):
  def change(bias):
    bias[0] += 1.0
    return bias
  code, output = tf_check(perturbed(golden_file, tmp_path, 'weights/reward/out/bias', change), capsys)
  assert code == 1
  failed = failed_quantities(output)
  assert {'reward_mean', 'imagine/reward', 'imagine/returns', 'imagine/actor_loss'} <= failed
  assert not failed & {'embed', 'post/mean', 'image_mean', 'kl'}  # The reward head feeds none of these.


def test_check_fails_naming_the_posterior_when_one_noise_value_changes(golden_file, tmp_path, capsys):
  def change(noise):
    noise[0, -1, 0] += 0.5  # The last step's sample: no later step sees it.
    return noise
  code, output = tf_check(perturbed(golden_file, tmp_path, 'noise/observe/post', change), capsys)
  assert code == 1
  failed = failed_quantities(output)
  assert {'post/stoch', 'feat', 'image_mean', 'imagine/feat'} <= failed
  assert not failed & {'embed', 'post/mean', 'post/deter', 'prior/stoch', 'kl'}


def test_check_fails_on_a_stored_kl_just_beyond_its_tolerance(golden_file, tmp_path, capsys):
  stored = golden_numpy.load(golden_file)
  allowed = golden_numpy.tolerance('kl', stored['out']['kl'], stored['config'])

  def change(kl):
    kl[1, 3] += 2 * allowed
    return kl
  code, output = tf_check(perturbed(golden_file, tmp_path, 'out/kl', change), capsys)
  assert code == 1
  assert failed_quantities(output) == {'kl'}


def test_an_updated_weight_passes_while_its_step_is_within_update_tol_and_fails_beyond(golden_file, tmp_path, capsys):
  stored = golden_numpy.load(golden_file)
  before = stored['weights']['encoder/h0/bias'].astype(np.float64)
  for factor, code in ((0.5, 0), (2.0, 1)):
    def change(updated):  # The stored step of the whole tensor, longer by factor x UPDATE_TOL.
      return (before + (updated - before) * (1 + factor * golden_numpy.UPDATE_TOL)).astype(np.float32)
    result, output = tf_check(perturbed(golden_file, tmp_path, 'updated/encoder/h0/bias', change), capsys)
    assert result == code, output[-2000:]
  assert failed_quantities(output) == {'updated/encoder/h0/bias'}


def errors_by_quantity(output):
  """{quantity: largest absolute error} from the checker's table."""
  rows = [line.split() for line in output.splitlines()[1:]]
  return {row[0]: float(row[1]) for row in rows if len(row) >= 4 and row[1][0].isdigit()}


def test_check_passes_for_a_replay_that_rounds_differently(golden_file, tmp_path, capsys):
  """The file was written with Keras' transposed convolutions. Replayed with the
  decoder's first one computed as a matmul (--layer_impl fast: the same math summed
  in another order), every quantity still passes, though the images differ."""
  def change(config):
    settings = json.loads(str(config))
    assert settings['layer_impl'] == 'keras'
    return np.array(json.dumps(dict(settings, layer_impl='fast')))
  code, output = tf_check(perturbed(golden_file, tmp_path, 'config', change), capsys)
  assert code == 0, output[-3000:]
  assert errors_by_quantity(output)['image_mean'] > 0


def test_numpy_replay_passes_without_tensorflow(golden_file):
  code, output = numpy_check(golden_file)
  assert code == 0, output[-3000:]
  assert output.endswith('PASS: every quantity within float32 tolerance.')
  assert 'model_grad_norm' in output and 'needs gradients' in output


def test_numpy_replay_fails_when_the_gru_gates_are_reordered(golden_file, tmp_path):
  def swap_update_and_reset(kernel):  # Keras order (z, r, h) read as (r, z, h).
    z, r, h = np.split(kernel, 3, -1)
    return np.concatenate([r, z, h], -1)
  code, output = numpy_check(perturbed(golden_file, tmp_path, 'weights/rssm/gru/recurrent_kernel', swap_update_and_reset))
  assert code == 1
  assert {'post/deter', 'prior/mean', 'imagine/feat'} <= failed_quantities(output)


def test_stored_lambda_returns_and_weights_match_the_n_step_form(golden_file):
  """R_t = (1 - l) sum_{n=1}^{N-1} l^{n-1} G_t^n + l^{N-1} G_t^N with N = H - 1 - t and
  the n-step returns G_t^n = sum_{k<n} g^k r_{t+k} + g^n v_{t+n}: the closed form of
  paper eq. 6, not the recursion the code uses."""
  stored = golden_numpy.load(golden_file)
  out, config = stored['out'], stored['config']
  reward, value = out['imagine/reward'].astype(np.float64), out['imagine/value'].astype(np.float64)
  gamma, lam, H = config['discount'], config['disclam'], config['horizon']
  assert not config['pcont'] and np.allclose(out['imagine/pcont'], gamma)

  def n_step(t, n):
    return sum(gamma ** k * reward[t + k] for k in range(n)) + gamma ** n * value[t + n]

  expected = []
  for t in range(H - 1):
    N = H - 1 - t
    expected.append((1 - lam) * sum(lam ** (n - 1) * n_step(t, n) for n in range(1, N)) + lam ** (N - 1) * n_step(t, N))
  np.testing.assert_allclose(out['imagine/returns'], np.stack(expected), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['imagine/weights'], np.broadcast_to(gamma ** np.arange(H - 1)[:, None], (H - 1, reward.shape[1])), rtol=1e-6)


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
  not_golden = tmp_path / 'episode.npz'
  np.savez(not_golden, reward=np.zeros(3))
  assert golden.main(['check', str(not_golden)]) == 2
  assert capsys.readouterr().err.strip() == (
      f'golden: error: {not_golden} is not a golden file (no format_version or config); write one with scripts/golden.py write.')
  assert golden.main(['write', '--out', str(tmp_path / 'x.npz'), '--configs', 'debug', '--action_dist', 'onehot']) == 2
  assert 'one-hot actor' in capsys.readouterr().err
  code, output = numpy_check(tmp_path / 'missing.npz')
  assert code == 2
