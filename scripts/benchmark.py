"""Speed, memory and FLOPs of this Dreamer on this machine, in one run.

  python scripts/benchmark.py [--quick] [--parts train,breakdown,policy,flops,matmul,env,e2e]
      [--train-configs paper,debug,cpu] [--precision 32,bf16,16] [--envs 2] [--out FILE]

Prints a table; writes every number with metadata (date, TF version, git commit, command,
load average at start, and the machine: CPU model, cores, the ISA features that decide
matmul speed (AVX-512, its bfloat16 and float16 dot products, AMX matrix units) and a
machine kind made of them) as JSON, by default to results/benchmark-<machine kind>.json,
so that each kind of machine keeps its latest numbers. --quick (about 4 minutes on 2 idle
cores) times fewer repetitions. --precision runs the train configs once per listed
dreamer.py --precision (32 float32; bf16, 16 mixed precision). The parts, and how each is
measured:

train   Per config (paper = the dreamer.py defaults; debug and cpu presets) a child process,
        this script with --child NAME, builds the agent for 6 actions (walker), makes one
        random batch of the right shapes and dtypes as tf tensors and times
        agent.train(batch), forced to finish by reading one metric as a float: the first
        call (trace_s: its tracing, timed alone as get_concrete_function; first_call_s:
        tracing plus the first run, in which TF optimises the graph and the step's memory
        is first written: first_call_faulted_mib, the page faults of that run), 2 untimed
        calls, then --steps timed calls. peak_rss_mb is the child's ru_maxrss right after
        them: the training peak, isolated from the rest. Before the children, first_touch
        times writing 256 MiB of fresh memory and the same again right after freeing it:
        on this project's Intel VM the first ran at about 100 MB/s, the second at 2 GB/s.
        allocator_peak_mb is TF's allocator peak (get_memory_info) over the child's life:
        the tensors alone, without libraries, graphs and the allocator's free pool.
breakdown  In the same child: the parts of one train step as separate tf.functions on
        fixed inputs, each timed once per round over --steps rounds (median): world model
        forward, its backward (forward+backward minus forward), the action-entropy
        estimate (100 actor samples per start state), imagination forward, the behavior
        losses forward, their backward through imagination, and the rest of the step
        (optimisers, clipping, finiteness checks, metrics), plus the op runs per call of
        each (graph walk below), the input pipeline's time per batch (replay.make_dataset
        over random episodes; dreamer.py prefetches it alongside training), and each
        convolution of the encoder and decoder alone, forward+backward, with its GFLOP/s
        (conv_layers).
policy  In the same child: Policy(agent, sample=True, amount=expl_amount) on a batch of 1 (one
        tf.function call plus the action's conversion to numpy), median of many calls.
flops   In the same child, FLOPs of one train step counted three ways:
        analytic    flop_count.analytic_flops(); the fraction of peak uses it. The issue's
                    ~0.95 TFLOP for the paper config is this total without value_loss.
        profiler    tf.compat.v1.profiler float_operation() on agent.train's concrete
                    graph. On TF 2.21 it only sees the outer graph: tf.scan loops (RSSM
                    observe, imagination, lambda-return) and their gradients are While ops
                    or function calls it does not enter, so their bodies count zero times.
        graph_walk  the per-op FLOP statistics TF registers for that profiler, summed over
                    the ops that run (reachable from outputs or stateful), entering
                    function calls, conds (larger branch) and while bodies x trip count;
                    convolutions and their gradients counted exactly from their shapes (TF's
                    statistics for the gradients use H_out*W_out/stride^2 for H_in*W_in, 6x
                    too much for the decoder's first layer). Backward passes here need only
                    what the optimisers use, so the dense part is below analytic's x3.
                    The same walk counts op runs per step (ops_per_step).
matmul  Median GFLOP/s (2 n^3 FLOPs) of an n x n tf.matmul in float32, bfloat16 and float16,
        alternating: this machine's practical peak per precision. Achieved fraction = analytic
        FLOPs per step / step time (median, and fastest) / the peak of the run's precision.
env     Agent steps/s of dmc_walker_walk (action repeat 2, 64x64 images) in
        wrappers.Parallel 'process' workers with random actions: one worker (Mesa's
        llvmpipe renders on every core by default), one worker limited to one render
        thread (LP_NUM_THREADS=1), then --envs default workers stepped together as
        dreamer.py steps them (all actions sent, then all results received).
        scaling = rate(N) / (N x rate(one thread)): N workers against N one-core workers.
        speedup_over_one_worker = rate(N) / rate(one worker on all cores), which a single
        worker's multi-threaded rendering caps below N. Then the env loop `simulate` on
        the first worker, its promises wrapped to time how long the parent blocks on
        them: inside = that wait (physics, rendering, the worker's pickling, the
        transfer), outside = the rest (policy, batching, sending, bookkeeping). The
        policy is the paper config's acting network, as collection runs it; a zero-cost
        policy alternates with it for comparison, and agent_over_zero_rate is the ratio
        of their rates: stricter than the time share, since a policy that slows the
        renderer (with spinning BLAS threads, say) lowers it. policy_call_in_loop_ms is
        the median policy call inside that loop, policy_call_back_to_back_ms the same
        call repeated without waits. wake_penalty times a trivial tf.function call and a
        NumPy sum back to back and right after 16 ms asleep, the wait for a render.
e2e     `dreamer.py --configs debug --task dmc_cartpole_balance --steps 800` in a
        subprocess: env steps / wall time, INCLUDING interpreter start, TF import, worker
        start, tracing, prefill and evaluation episodes.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'scripts'))
import flop_count  # noqa: E402 (needs the path above)
PARTS = ('train', 'breakdown', 'policy', 'flops', 'matmul', 'env', 'e2e')
CHILD_PARTS = ('train', 'breakdown', 'policy', 'flops')
PRECISIONS = {'32': 'float32', 'bf16': 'bfloat16', '16': 'float16'}  # dreamer.py --precision: matmul dtype.
# CPU features that decide matmul speed: vector units, bfloat16/float16 dot products, matrix units (AMX).
ISA_FEATURES = ('avx2', 'avx512f', 'avx512_bf16', 'avx512_fp16', 'amx_tile', 'amx_bf16', 'amx_fp16')


# The child: one config's train step, policy step and FLOPs in a fresh process.

def make_config(name, precision='32'):
  import tf_startup  # noqa: F401 (first: filters TensorFlow's start-up messages)
  import configs
  presets = [] if name == 'paper' else ['--configs', name]
  with tempfile.TemporaryDirectory() as logdir:  # parse_args checks that it is writable.
    return configs.parse_args(['--logdir', logdir, '--task', 'dmc_walker_walk', '--precision', precision, *presets])


def stats(times):
  return dict(median_s=float(np.median(times)), min_s=min(times), max_s=max(times), count=len(times))


def peak_rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


def timed(fn, count):
  times = []
  for _ in range(count):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def step_parts(agent, batch):
  """The parts of one train step (agent.Dreamer.gradients) as separate tf.functions
  on fixed inputs: the posterior and imagined features come from one untimed call.
  A backward pass is timed together with its forward pass; `breakdown` subtracts."""
  import tensorflow as tf
  data = agent.preprocess(batch)
  optimizers = agent.optimizers()
  model_vars = optimizers.pop('model')[1]
  post = tf.function(lambda: agent.model_loss(data)[1])()
  imag_feat = tf.function(lambda: agent.imagine_ahead(post))()

  def world_model(backward):
    with tf.GradientTape() as tape:
      loss = agent.model_loss(data)[0]
    return tape.gradient(loss, model_vars) if backward else loss

  parts = dict(
      world_model_forward=lambda: world_model(False),
      world_model_forward_backward=lambda: world_model(True),
      action_entropy=lambda: tf.reduce_mean(agent.actor(agent.dynamics.get_feat(post)).entropy()),
      imagination_forward=lambda: agent.imagine_ahead(post),
      behavior_losses_forward=lambda: agent.behavior_losses(imag_feat)[:2],
      behavior_forward_backward=lambda: agent.behavior_gradients(post, None, optimizers)[0],
      train_step=lambda: agent.train(batch))
  return {name: tf.function(fn) for name, fn in parts.items()}


def breakdown(agent, batch, rounds):
  """Median seconds and op runs per train step of each part of it. Every round times
  each part once, so that drift in the machine's speed hits all alike. rest = the
  step minus the parts: optimisers, gradient clipping, finiteness checks, metrics."""
  import tensorflow as tf
  parts = step_parts(agent, batch)
  run = {name: (lambda fn=fn: [t.numpy() for t in tf.nest.flatten(fn())]) for name, fn in parts.items()}
  for fn in run.values():
    fn()  # Trace.
  times = {name: [] for name in run}
  for _ in range(rounds):
    for name, fn in run.items():
      times[name] += timed(fn, 1)
  t = {name: float(np.median(values)) for name, values in times.items()}
  notes = []
  ops = {name: flop_count.graph_walk(fn.get_concrete_function().graph, notes)['ops'] for name, fn in parts.items()}
  seconds = dict(
      world_model_forward=t['world_model_forward'],
      world_model_backward=t['world_model_forward_backward'] - t['world_model_forward'],
      action_entropy=t['action_entropy'], imagination_forward=t['imagination_forward'],
      behavior_losses_forward=t['behavior_losses_forward'],
      behavior_backward=t['behavior_forward_backward'] - t['imagination_forward'] - t['behavior_losses_forward'])
  seconds['rest'] = t['train_step'] - sum(seconds.values())
  return dict(seconds=seconds, step_s=t['train_step'], rounds=rounds, measured_s=t, ops=ops)


def conv_layers(agent, frames, rounds):
  """Each convolution of the encoder and decoder alone on `frames` random inputs of its
  shape: median seconds of forward plus backward (weights and, except for the
  encoder's first layer, whose input is the image, the input) and the GFLOP/s that
  makes (flop_count's formulas; the step itself runs the encoder's first two convs
  forward twice, tf.recompute_grad). The layers exist once the agent has run."""
  import tensorflow as tf
  import tf_keras as keras
  encoder, decoder = agent.encoder.named_layers(), agent.decoder.named_layers()
  # The encoder starts from the image, the decoder from its dense layer's 1x1 output;
  # each layer's output shape is the next one's input.
  chains = (('encoder', encoder, ('h0', 'h1', 'h2', 'h3'), [frames, 64, 64, 3]),
            ('decoder', decoder, ('h2', 'h3', 'h4', 'h5'), [frames, 1, 1, decoder['h2'].kernel.shape[-1]]))
  out = {}
  for part, layers, names, shape in chains:
    for name in names:
      layer = layers[name]
      out_shape = layer.compute_output_shape(shape).as_list()
      x = tf.Variable(tf.random.normal(shape, dtype=layer.compute_dtype))
      image_input = (part, name) == ('encoder', 'h0')
      watched = layer.trainable_variables + ([] if image_input else [x])

      def forward_backward(layer=layer, x=x, watched=watched):
        with tf.GradientTape() as tape:
          y = tf.cast(layer(x), tf.float32)
          loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, watched)
      fn = tf.function(forward_backward)
      run = lambda fn=fn: [g.numpy() for g in fn()]
      run()
      seconds = float(np.median(timed(run, rounds)))
      kernel, c_in, c_out = layer.kernel.shape[0], shape[-1], out_shape[-1]
      if isinstance(layer, keras.layers.Conv2DTranspose):
        forward = flop_count.deconv_flops(shape[1], kernel, c_in, c_out) * frames
      else:
        forward = flop_count.conv_flops(out_shape[1], kernel, c_in, c_out) * frames
      passes = 2 if image_input else 3
      out[f'{part} {name}'] = dict(
          shape=f'{shape[1]}x{shape[2]}x{c_in} -> {out_shape[1]}x{out_shape[2]}x{c_out}', kernel=kernel,
          seconds=seconds, gflops=passes * forward / seconds / 1e9)
      shape = out_shape
  return out


def input_pipeline(config, batches, episodes=3):
  """Seconds per batch of replay.make_dataset over random episodes of the config's
  length (generator, batching; prefetch overlaps it with training in dreamer.py)."""
  import replay
  import storage
  rng = np.random.default_rng(0)
  rows = config.time_limit // config.action_repeat + 1
  with tempfile.TemporaryDirectory() as folder:
    for _ in range(episodes):
      storage.save_episode(folder, dict(
          image=rng.integers(0, 256, (rows, 64, 64, 3), np.uint8), discount=np.ones(rows, np.float32),
          action=rng.uniform(-1, 1, (rows, flop_count.ACTIONS)).astype(np.float32), reward=rng.normal(size=rows).astype(np.float32)))
    dataset = iter(replay.make_dataset(replay.Episodes(folder), config.batch_size, config.batch_length))
    timed(lambda: next(dataset), 5)
    return sum(timed(lambda: next(dataset), batches)) / batches


def child(name, precision, parts, steps, policy_calls):
  import tensorflow as tf
  import dreamer
  from agent import Dreamer, Policy
  config = make_config(name, precision)
  dreamer.setup_devices(config)  # The mixed-precision policy.
  agent = Dreamer(config, flop_count.ACTIONS)
  shape = [config.batch_size, config.batch_length]
  batch = dict(
      image=tf.cast(tf.random.uniform(shape + [64, 64, 3], 0, 256, tf.int32), tf.uint8),
      action=tf.random.uniform(shape + [flop_count.ACTIONS], -1, 1), reward=tf.random.normal(shape),
      discount=tf.ones(shape))
  sizes = 'batch_size batch_length horizon deter_size stoch_size num_units cnn_depth'.split()
  out = dict(config=name, precision=precision, sizes={key: getattr(config, key) for key in sizes},
             rss_before_train_mb=peak_rss_mb())
  if 'train' in parts:
    metrics = {}
    def step():
      metrics.update(agent.train(batch))
      float(metrics['model_loss'])
    trace = timed(lambda: agent.train.get_concrete_function(batch), 1)[0]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    first = trace + timed(step, 1)[0]
    faulted = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) * resource.getpagesize() / 2 ** 20
    timed(step, 2)
    out['train'] = dict(first_call_s=first, trace_s=trace, first_call_faulted_mib=faulted, **stats(timed(step, steps)))
    out['peak_rss_mb'] = peak_rss_mb()
    device = 'GPU:0' if tf.config.list_physical_devices('GPU') else 'CPU:0'
    try:
      out['allocator_peak_mb'] = tf.config.experimental.get_memory_info(device)['peak'] / 2 ** 20
    except ValueError:  # The CPU allocator keeps no statistics without oneDNN (TF_ENABLE_ONEDNN_OPTS=0).
      out['allocator_peak_mb'] = None
    losses = [key for key in metrics if key.endswith(('_loss', '_grad_norm'))]
    out['finite'] = {key: bool(np.isfinite(float(metrics[key]))) for key in losses}
  if 'breakdown' in parts:
    out['breakdown'] = breakdown(agent, batch, steps)
    out['breakdown']['input_pipeline_s'] = input_pipeline(config, steps)
    out['breakdown']['conv_layers'] = conv_layers(agent, config.batch_size * config.batch_length, steps)
  if 'policy' in parts:
    policy = Policy(agent, sample=True, amount=config.expl_amount)
    obs = {'image': np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), np.uint8)}
    state = None
    def act(reset=np.array([False])):
      nonlocal state
      _, state = policy(obs, reset, state)
    act(np.array([True]))
    timed(act, 5)
    out['policy'] = stats(timed(act, policy_calls))
  if 'flops' in parts:
    graph = agent.train.get_concrete_function(batch).graph
    notes = []
    walk = flop_count.graph_walk(graph, notes)
    out['flops'] = dict(analytic=flop_count.analytic_flops(config), profiler_outer_graph=flop_count.profiler_flops(graph),
                        graph_walk=walk['flops'], graph_walk_notes=notes[:20])
    out['ops_per_step'] = walk['ops']
  print('RESULT', json.dumps(out))


def run_child(name, precision, args):
  command = [sys.executable, __file__, '--child', name, '--precision', precision, '--parts', ','.join(args.parts),
             '--steps', str(args.steps), '--policy-calls', str(args.policy_calls)]
  result = subprocess.run(command, capture_output=True, text=True)
  lines = [line for line in result.stdout.splitlines() if line.startswith('RESULT ')]
  if result.returncode or not lines:
    raise RuntimeError(f'{" ".join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}')
  return json.loads(lines[-1][len('RESULT '):])


# Parts measured in the main process.

def matmul_peaks(size, reps):
  """Median GFLOP/s (2 n^3 FLOPs) of an n x n tf.matmul in each precision's dtype, the
  dtypes alternating rep by rep: this machine's practical peak per precision. A dtype
  without a CPU kernel gets {'error': ...}."""
  import tensorflow as tf
  calls, times, out = {}, {}, {}
  for precision, dtype in PRECISIONS.items():
    a, b = (tf.cast(tf.random.normal([size, size]), dtype) for _ in range(2))
    calls[precision] = lambda a=a, b=b: tf.matmul(a, b)[0, 0].numpy()
    try:
      calls[precision]()
      times[precision] = []
    except Exception as e:  # No kernel for this dtype here.
      out[precision] = dict(dtype=dtype, error=f'{type(e).__name__}: {e}'.splitlines()[0])
  for _ in range(reps):
    for precision in times:
      times[precision] += timed(calls[precision], 1)
  for precision, values in times.items():
    out[precision] = dict(dtype=PRECISIONS[precision], size=size, reps=reps, gflops=2 * size ** 3 / np.median(values) / 1e9)
  return out


def fraction_of_peak(flops, seconds, peak_gflops):
  """Achieved GFLOP/s of `flops` done in `seconds`, and its fraction of the peak."""
  achieved = flops / seconds / 1e9
  return achieved, achieved / peak_gflops


def add_fractions(run, peaks):
  """Every train-step time of a child's `run` as a fraction of its precision's matmul peak."""
  if 'error' in run:  # The child failed: nothing to divide.
    return
  peak = peaks.get(run['precision'], {}).get('gflops')
  if not (peak and 'train' in run and 'flops' in run):
    return
  flops = run['flops']['analytic']['total']
  run['achieved_gflops'], run['fraction_of_peak'] = fraction_of_peak(flops, run['train']['median_s'], peak)
  run['fraction_of_peak_best'] = fraction_of_peak(flops, run['train']['min_s'], peak)[1]
  if 'breakdown' in run:
    run['breakdown']['fraction_of_peak'] = fraction_of_peak(flops, run['breakdown']['step_s'], peak)[1]


class TimedWorker:
  """A wrappers.Parallel env whose promises add the time spent waiting on them to `.wait`."""

  def __init__(self, env):
    self.env, self.act_space, self.wait = env, env.act_space, 0.0

  def step(self, action):
    return self._timed(self.env.step(action))

  def reset(self):
    return self._timed(self.env.reset())

  def _timed(self, promise):
    def resolve():
      start = time.perf_counter()
      result = promise()
      self.wait += time.perf_counter() - start
      return result
    return resolve


def env_rates(count, steps):
  import functools
  from unittest import mock
  import wrappers
  ctor = functools.partial(wrappers.make_env, 'dmc_walker_walk', 2, 1000, (64, 64))
  worker = lambda seed: wrappers.Parallel(functools.partial(ctor, seed=seed), 'process')
  one, many = worker(0), [worker(2 + i) for i in range(count)]
  with mock.patch.dict(os.environ, LP_NUM_THREADS='1'):  # Mesa renders on one core.
    single = worker(1)
  try:
    rng = np.random.default_rng(0)

    def rate(envs, steps):
      for env in envs:
        env.reset()()
      start = time.perf_counter()
      for _ in range(steps):
        promises = [env.step(env.act_space.sample(rng)) for env in envs]
        for env, promise in zip(envs, promises):
          if promise()[2]:
            env.reset()()
      return steps * len(envs) / (time.perf_counter() - start)

    for env in [one, single] + many:
      rate([env], 5)  # Warm up the workers.
    out = dict(one_worker_steps_per_s=rate([one], steps), one_thread_worker_steps_per_s=rate([single], steps),
               workers=count, many_workers_steps_per_s=rate(many, steps))
    out['scaling'] = out['many_workers_steps_per_s'] / (count * out['one_thread_worker_steps_per_s'])
    out['speedup_over_one_worker'] = out['many_workers_steps_per_s'] / out['one_worker_steps_per_s']
    out.update(policy_split(one, steps))
    out['wake_penalty'] = wake_penalty()
    return out
  finally:
    for env in [one, single] + many:
      env.close()


def policy_split(env, steps, rounds=2):
  """The env loop `simulate` on one worker, with the paper config's acting network (what
  collection runs) and with a zero-cost policy, alternating in `rounds` so that drift in
  the machine's speed hits both alike."""
  from agent import Dreamer, Policy
  from wrappers import simulate
  agent = Dreamer(make_config('paper'), env.act_space.shape[0])
  policy = Policy(agent, sample=True, amount=0.3)
  calls = []

  def agent_policy(*args):
    start = time.perf_counter()
    out = policy(*args)
    calls.append(time.perf_counter() - start)
    return out

  zero = lambda obs, reset, state: (np.zeros((len(reset),) + env.act_space.shape, np.float32), None)
  simulate(policy, [env], steps=5)  # Trace the policy.
  totals = {name: [0.0, 0.0] for name in ('agent', 'zero')}  # Loop time, time waiting on the worker.
  for _ in range(rounds):
    for name, fn in (('agent', agent_policy), ('zero', zero)):
      worker = TimedWorker(env)
      start = time.perf_counter()
      simulate(fn, [worker], steps=steps // rounds)
      totals[name][0] += time.perf_counter() - start
      totals[name][1] += worker.wait
  out = {}
  for name, (total, wait) in totals.items():
    out[f'{name}_policy_steps_per_s'] = rounds * (steps // rounds) / total
    out[f'{name}_policy_inside_worker_fraction'] = wait / total
  out['agent_over_zero_rate'] = out['agent_policy_steps_per_s'] / out['zero_policy_steps_per_s']
  obs = {'image': np.zeros((1, 64, 64, 3), np.uint8)}
  state = policy(obs, np.array([True]), None)[1]
  out['policy_call_in_loop_ms'] = 1e3 * float(np.median(calls))
  out['policy_call_back_to_back_ms'] = 1e3 * float(np.median(timed(lambda: policy(obs, np.array([False]), state), 100)))
  return out


def first_touch(mib=256):
  """Seconds to write `mib` MiB of newly allocated memory, then the same again right
  after freeing it. On some VMs the host backs guest memory lazily and takes freed
  memory back within seconds, so the first write of fresh memory (every page
  faulted in) can run at a tiny fraction of the rate of the second."""
  times = []
  for _ in range(2):
    start = time.perf_counter()
    np.ones(mib * 2 ** 20 // 8)
    times.append(time.perf_counter() - start)
  return dict(mib=mib, fresh_s=times[0], reused_s=times[1])


def wake_penalty(calls=50, pause=0.016):
  """Median time of a trivial tf.function call and of a NumPy sum of 1000 floats, back to
  back and right after `pause` seconds asleep (about one render): on some machines code
  that has not run for a few ms runs several times slower (evicted caches)."""
  import tensorflow as tf
  add_one = tf.function(lambda x: x + 1)
  one, floats = tf.constant(1.0), np.ones(1000)
  add_one(one)
  after_sleep = lambda fn: [(time.sleep(pause), timed(fn, 1)[0])[1] for _ in range(calls)]
  out = {}
  for name, fn in (('tf_function_call', lambda: add_one(one)), ('numpy_sum', floats.sum)):
    out[f'{name}_back_to_back_us'] = 1e6 * float(np.median(timed(fn, calls)))
    out[f'{name}_after_sleep_us'] = 1e6 * float(np.median(after_sleep(fn)))
  return out


def end_to_end(steps):
  with tempfile.TemporaryDirectory() as logdir:
    command = [sys.executable, str(ROOT / 'dreamer.py'), '--configs', 'debug', '--task',
               'dmc_cartpole_balance', '--steps', str(steps), '--logdir', logdir]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
      raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr[-4000:]}')
  return dict(command=' '.join(command[1:-1] + ['<tmp>']), env_steps=steps, wall_s=wall,
              env_steps_per_s=steps / wall, note='includes startup, TF import, tracing, prefill and evals')


def cpu_info(text):
  """CPU model, logical cores and ISA_FEATURES (present or not) from /proc/cpuinfo's text."""
  field = lambda name: re.search(rf'^{name}\s*:(.*)$', text, re.M)
  model, flags = field('model name'), field('flags')
  flags = set(flags.group(1).split()) if flags else set()
  return dict(cpu_model=model.group(1).strip() if model else platform.processor() or 'unknown',
              cores=len(re.findall(r'^processor\s*:', text, re.M)) or os.cpu_count(),
              isa={feature: feature in flags for feature in ISA_FEATURES})


def machine_kind(info):
  """A file-name word for the kind of machine: the CPU model without trademarks,
  clock and filler words, plus '-amx' with matrix units ('amd-epyc', 'intel-xeon-amx')."""
  name = re.sub(r'\((R|TM)\)|@.*|\b(processor|cpu|\d+-core)\b', ' ', info['cpu_model'], flags=re.I)
  words = re.findall(r'[a-z0-9]+', name.lower()) or ['unknown']
  return '-'.join(words) + ('-amx' if info['isa'].get('amx_bf16') else '')


def metadata():
  git = lambda *a: subprocess.run(['git', '-C', str(ROOT), *a], capture_output=True, text=True).stdout.strip()
  cpu = cpu_info(pathlib.Path('/proc/cpuinfo').read_text() if os.path.exists('/proc/cpuinfo') else '')
  return dict(date=datetime.datetime.now().isoformat(timespec='seconds'), python=platform.python_version(),
              tensorflow=importlib.metadata.version('tensorflow'), **cpu, machine_kind=machine_kind(cpu),
              onednn=os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default (on)'),
              git_commit=git('rev-parse', 'HEAD'), git_dirty=bool(git('status', '--porcelain')),
              command=' '.join([sys.executable] + sys.argv), load_average_at_start=os.getloadavg())


def print_table(result):
  rows = []
  row = lambda *cells: rows.append(cells)
  meta = result['meta']
  features = ', '.join(f'{feature} {"yes" if present else "no"}' for feature, present in meta['isa'].items())
  row('machine', f'{meta["cpu_model"]}, {meta["cores"]} cores', f'kind {meta["machine_kind"]}; {features}')
  for precision, m in result.get('matmul', {}).items():
    if precision == 'error' or 'error' in m:
      row('matmul', f'{precision} tf.matmul', 'FAILED ' + (m if precision == 'error' else m['error']))
    else:
      row('matmul', f'{m["size"]}^2 {m["dtype"]} tf.matmul, median of {m["reps"]}', f'{m["gflops"]:.1f} GFLOP/s')
  touch = result.get('first_touch', {})
  if 'error' in touch:
    row('memory', 'first touch', 'FAILED ' + touch['error'].splitlines()[0])
  elif touch:
    row('memory', f'write {touch["mib"]} MiB fresh; freed and written again', f'{touch["fresh_s"]:.2f} s; {touch["reused_s"]:.2f} s')
  for name, r in result['configs'].items():
    if 'error' in r:
      row(name, 'FAILED', r['error'].splitlines()[0])
    if 'train' in r:
      t = r['train']
      row(name, 'train step, first call (of it tracing; memory faulted in)',
          f'{t["first_call_s"]:.2f} s ({t["trace_s"]:.2f} s; {t["first_call_faulted_mib"]:.0f} MiB)')
      row(name, f'train step, median (min-max of {t["count"]})', f'{t["median_s"]:.3f} s ({t["min_s"]:.3f}-{t["max_s"]:.3f})')
      tensors = 'not counted' if r['allocator_peak_mb'] is None else f'{r["allocator_peak_mb"]:.0f} MB'
      row(name, 'peak RSS after train steps (before); tensors', f'{r["peak_rss_mb"]:.0f} MB ({r["rss_before_train_mb"]:.0f} MB); {tensors}')
    if 'policy' in r:
      row(name, 'policy step, batch 1, median', f'{r["policy"]["median_s"] * 1e3:.2f} ms')
    if 'flops' in r:
      f = r['flops']
      parts = ', '.join(f'{k} {v / 1e9:.3g}' for k, v in f['analytic'].items() if k != 'total')
      row(name, 'GFLOP/step analytic', f'{f["analytic"]["total"] / 1e9:.4g} ({parts})')
      row(name, 'GFLOP/step graph walk; profiler', f'{f["graph_walk"] / 1e9:.4g}; {f["profiler_outer_graph"] / 1e9:.4g} (outer graph only, no loop bodies)')
    if 'fraction_of_peak' in r:
      row(name, f'achieved GFLOP/s; fraction of {PRECISIONS[r["precision"]]} matmul (median; fastest)',
          f'{r["achieved_gflops"]:.1f}; {r["fraction_of_peak"]:.1%}; {r["fraction_of_peak_best"]:.1%}')
    if 'finite' in r:
      row(name, 'losses and gradient norms finite', 'all' if all(r['finite'].values()) else
          'NOT ' + ', '.join(key for key, ok in r['finite'].items() if not ok))
    if 'ops_per_step' in r:
      row(name, 'op runs per train step (loop bodies x trips)', f'{r["ops_per_step"]}')
    if 'breakdown' in r:
      b = r['breakdown']
      share = f'; {b["fraction_of_peak"]:.1%} of peak' if 'fraction_of_peak' in b else ''
      row(name, f'step parts, median of {b["rounds"]} rounds', f'step {b["step_s"] * 1e3:.1f} ms{share}')
      for part, seconds in b['seconds'].items():
        row(name, f'... {part.replace("_", " ")}', f'{seconds * 1e3:.1f} ms ({seconds / b["step_s"]:.0%})')
      row(name, '... input pipeline per batch (prefetched)', f'{b["input_pipeline_s"] * 1e3:.1f} ms')
      row(name, 'op runs per call of each part', ', '.join(f'{part} {ops}' for part, ops in b['ops'].items()))
      peak = result.get('matmul', {}).get(r['precision'], {}).get('gflops')
      for layer, c in b.get('conv_layers', {}).items():
        share = f', {c["gflops"] / peak:.0%} of peak' if peak else ''
        row(name, f'... {layer} {c["shape"]}, k{c["kernel"]}, forward+backward', f'{c["seconds"] * 1e3:.1f} ms, {c["gflops"]:.1f} GFLOP/s{share}')
  e = result.get('env', {})
  if 'error' in e:
    row('env', 'FAILED', e['error'].splitlines()[0])
  elif e:
    row('env', 'walker agent steps/s, 1 worker rendering on all cores', f'{e["one_worker_steps_per_s"]:.1f}')
    row('env', '... 1 worker rendering on 1 thread', f'{e["one_thread_worker_steps_per_s"]:.1f}')
    row('env', f'... {e["workers"]} workers together (scaling)',
        f'{e["many_workers_steps_per_s"]:.1f} ({e["scaling"]:.2f}; {e["speedup_over_one_worker"]:.2f}x the first row)')
    for policy, label in (('agent', 'paper agent'), ('zero', 'zero-cost')):
      row('env', f'simulate, {label} policy: steps/s, in worker', f'{e[policy + "_policy_steps_per_s"]:.1f}, {e[policy + "_policy_inside_worker_fraction"]:.0%}')
    row('env', 'agent policy rate / zero-cost rate', f'{e["agent_over_zero_rate"]:.2f}')
    row('env', 'policy call in the loop; back to back', f'{e["policy_call_in_loop_ms"]:.2f} ms; {e["policy_call_back_to_back_ms"]:.2f} ms')
    w = e['wake_penalty']
    for name, label in (('tf_function_call', 'trivial tf.function call'), ('numpy_sum', 'NumPy sum of 1000')):
      row('env', f'{label}: back to back; after 16 ms asleep',
          f'{w[name + "_back_to_back_us"]:.0f} us; {w[name + "_after_sleep_us"]:.0f} us')
  e = result.get('e2e', {})
  if e:
    row('e2e', 'debug run, env steps/s', e.get('error') or f'{e["env_steps_per_s"]:.1f} ({e["env_steps"]} in {e["wall_s"]:.1f} s, incl. startup and tracing)')
  width = [max(len(cells[i]) for cells in rows) for i in range(2)]
  for cells in rows:
    print(f'{cells[0]:<{width[0]}}  {cells[1]:<{width[1]}}  {cells[2]}')


def attempt(fn, *args):
  """fn(*args), or {'error': ...} if it raised, so that one failing part keeps the others."""
  try:
    return fn(*args)
  except Exception as e:
    print(f'{fn.__name__} failed: {e}', file=sys.stderr)
    return {'error': f'{type(e).__name__}: {e}'}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true', help='fewer repetitions (under 10 minutes)')
  parser.add_argument('--parts', default=','.join(PARTS), help='comma-separated subset of ' + ','.join(PARTS))
  parser.add_argument('--train-configs', default='paper,debug,cpu', help='paper and/or dreamer.py presets')
  parser.add_argument('--steps', type=int, help='timed train steps per config (10 quick, 30 full)')
  parser.add_argument('--policy-calls', type=int, help='timed policy steps (100 quick, 500 full)')
  parser.add_argument('--env-steps', type=int, help='agent steps per env measurement (200 quick, 1000 full)')
  parser.add_argument('--envs', type=int, default=os.cpu_count(), help='concurrent env workers')
  parser.add_argument('--e2e-steps', type=int, default=800)
  parser.add_argument('--matmul-size', type=int, default=4096)
  parser.add_argument('--precision', default='32',
                      help='comma-separated dreamer.py --precision values (32, bf16, 16) to run the train configs in')
  parser.add_argument('--out', help='JSON file (default results/benchmark-<machine kind>.json)')
  parser.add_argument('--child', help=argparse.SUPPRESS)
  args = parser.parse_args()
  args.parts = args.parts.split(',')
  if not set(args.parts) <= set(PARTS):
    parser.error(f'--parts must be among {",".join(PARTS)}')
  args.precision = args.precision.split(',')
  if not set(args.precision) <= set(PRECISIONS):
    parser.error(f'--precision must be among {",".join(PRECISIONS)}')
  args.steps = args.steps or (10 if args.quick else 30)
  args.policy_calls = args.policy_calls or (100 if args.quick else 500)
  args.env_steps = args.env_steps or (200 if args.quick else 1000)
  if args.child:
    return child(args.child, args.precision[0], args.parts, args.steps, args.policy_calls)

  result = dict(meta=metadata(), configs={})
  if 'matmul' in args.parts:
    result['matmul'] = attempt(matmul_peaks, args.matmul_size, 3 if args.quick else 10)
  if 'train' in args.parts:
    result['first_touch'] = attempt(first_touch)
  if set(args.parts) & set(CHILD_PARTS):
    for name in args.train_configs.split(','):
      for precision in args.precision:
        result['configs'][f'{name}/{precision}'] = r = attempt(run_child, name, precision, args)
        add_fractions(r, result.get('matmul', {}))
  if 'env' in args.parts:
    result['env'] = attempt(env_rates, args.envs, args.env_steps)
  if 'e2e' in args.parts:
    result['e2e'] = attempt(end_to_end, args.e2e_steps)
  result['main_process_peak_rss_mb'] = peak_rss_mb()
  print_table(result)
  out = pathlib.Path(args.out or ROOT / 'results' / f'benchmark-{result["meta"]["machine_kind"]}.json')
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2, default=float))
  print(f'Wrote {out}')
  parts = [result.get('matmul'), result.get('env'), result.get('e2e'), *result['configs'].values()]
  return 1 if any(part and 'error' in part for part in parts) else 0


if __name__ == '__main__':
  sys.exit(main())
