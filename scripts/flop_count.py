"""FLOPs of a Dreamer train step, for scripts/benchmark.py: analytic formulas over
models.py's networks, and a walk of the traced graph that counts loop bodies by their
trip counts."""

ACTIONS = 6  # dmc_walker_walk, the paper's default task.


# Analytic FLOPs. A multiply-add is 2 FLOPs; biases, activations, the GRU's gates, the
# distributions and the optimiser (elementwise, < 1% here) are not counted.

def conv_flops(size_out, kernel, c_in, c_out):
  """Conv2D on square images: every output pixel and channel is a k x k x c_in dot product."""
  return 2 * size_out ** 2 * kernel ** 2 * c_in * c_out


def deconv_flops(size_in, kernel, c_in, c_out):
  """Conv2DTranspose: every input pixel and channel adds a k x k x c_out patch."""
  return 2 * size_in ** 2 * kernel ** 2 * c_in * c_out


def dense_flops(n_in, n_out):
  """Dense layer, per row."""
  return 2 * n_in * n_out


def mlp_flops(n_in, units, layers, n_out):
  return dense_flops(n_in, units) + (layers - 1) * dense_flops(units, units) + dense_flops(units, n_out)


def analytic_flops(c, actions=ACTIONS):
  """FLOPs of one train step of models.py's networks for config `c`, as components.
  Forward passes that are trained count x3 (forward + backward for inputs and weights).
  conv: encoder and decoder on B*T frames. model_dense: RSSM observe step, decoder's
  first dense layer, reward (and pcont) head on B*T rows. action_entropy: the actor on B*T
  rows, forward only. imagination: img_step + actor + reward + value on B*T*H rows (the
  actor's backward runs through all of them). value_loss: the value head again on the
  first H-1 imagined steps for the value loss."""
  d, feat, hidden = c.cnn_depth, c.stoch_size + c.deter_size, c.deter_size
  encoder, size, channels = 0, 64, 3
  for mult in (1, 2, 4, 8):  # kernel 4, stride 2, VALID: 64 -> 31 -> 14 -> 6 -> 2.
    size = (size - 4) // 2 + 1
    encoder += conv_flops(size, 4, channels, mult * d)
    channels = mult * d
  decoder, size, channels = 0, 1, 32 * d
  for c_out, kernel in ((4 * d, 5), (2 * d, 5), (d, 6), (3, 6)):  # 1 -> 5 -> 13 -> 30 -> 64.
    decoder += deconv_flops(size, kernel, channels, c_out)
    size, channels = (size - 1) * 2 + kernel, c_out
  img_step = (dense_flops(c.stoch_size + actions, hidden) + dense_flops(hidden, 3 * c.deter_size)
              + dense_flops(c.deter_size, 3 * c.deter_size)  # GRU: input and recurrent kernels.
              + dense_flops(c.deter_size, hidden) + dense_flops(hidden, 2 * c.stoch_size))
  obs_step = img_step + dense_flops(c.deter_size + 32 * d, hidden) + dense_flops(hidden, 2 * c.stoch_size)
  reward = mlp_flops(feat, c.num_units, 2, 1)
  pcont = mlp_flops(feat, c.num_units, 3, 1) if c.pcont else 0
  value = mlp_flops(feat, c.num_units, 3, 1) if c.behavior == 'dreamer' else 0
  actor = mlp_flops(feat, c.num_units, 4, 2 * actions)
  frames = c.batch_size * c.batch_length
  rows = c.batch_size * (c.batch_length - bool(c.pcont)) * c.horizon
  flops = dict(
      conv=3 * frames * (encoder + decoder),
      model_dense=3 * frames * (obs_step + dense_flops(feat, 32 * d) + reward + pcont),
      action_entropy=frames * actor,
      imagination=3 * rows * (img_step + actor + reward + pcont + value),
      value_loss=3 * rows * (c.horizon - 1) // c.horizon * value)
  flops['total'] = sum(flops.values())
  return flops


# FLOPs from the traced graph.

def profiler_flops(graph):
  from tensorflow.compat.v1 import profiler
  options = profiler.ProfileOptionBuilder.float_operation()
  options['output'] = 'none'
  return profiler.profile(graph, options=options).total_float_ops


CALLS = {'While': ('body',), 'StatelessWhile': ('body',), 'If': ('then_branch', 'else_branch'),
         'StatelessIf': ('then_branch', 'else_branch'), 'PartitionedCall': ('f',),
         'StatefulPartitionedCall': ('f',)}


def conv_op_flops(op):
  """A convolution or either of its gradients: 2 x (elements of the forward conv's
  output) x k*k*C_in, exact for any padding and stride."""
  kernel = (op.outputs[0] if op.type == 'Conv2DBackpropFilter' else op.inputs[1]).shape
  forward_output = (op.outputs[0] if op.type == 'Conv2D' else op.inputs[2]).shape
  if not (kernel.is_fully_defined() and forward_output.is_fully_defined()):
    raise ValueError(op.name)
  return 2 * forward_output.num_elements() * kernel.num_elements() // kernel[-1]


def graph_walk(graph, notes):
  """Registered FLOPs and the number of op runs of the live ops of `graph` and of the
  functions it calls (loop bodies x trip count): dict(flops=, ops=)."""
  from tensorflow.python.framework import ops, tensor_util

  def body_of(graph, op, attr):
    return graph._get_function(op.get_attr(attr).name).graph

  def static(graph, known, tensor):  # Constant value through identities and calls.
    if tensor.ref() in known:
      return known[tensor.ref()]
    if tensor.op.type == 'Identity':
      return static(graph, known, tensor.op.inputs[0])
    if tensor.op.type in ('PartitionedCall', 'StatefulPartitionedCall'):
      body = body_of(graph, tensor.op, 'f')
      return static(body, bind(graph, known, body, tensor.op.inputs), body.outputs[tensor.value_index])
    return tensor_util.constant_value(tensor)

  def bind(graph, known, body, args):
    values = {arg.ref(): static(graph, known, value) for arg, value in zip(body.inputs, args)}
    return {key: value for key, value in values.items() if value is not None}

  def live(graph):
    todo = [t.op for t in graph.outputs] + list(graph.control_outputs)
    todo += [op for op in graph.get_operations() if op.op_def.is_stateful]
    seen = set()
    while todo:
      op = todo.pop()
      if op not in seen:
        seen.add(op)
        todo += [t.op for t in op.inputs] + list(op.control_inputs)
    return seen

  def count(graph, known):
    total, runs, alive = 0, 0, live(graph)
    for op in graph.get_operations():
      if op not in alive:
        continue
      runs += 1
      if op.type in CALLS:
        loop = op.type.endswith('While')
        trips = static(graph, known, op.inputs[1]) if loop else 1  # maximum_iterations.
        if trips is None or trips < 0:
          notes.append(f'{op.name}: unknown trip count, body counted once')
          trips = 1
        args = op.inputs[1:] if op.type.endswith('If') else op.inputs
        bodies = [count(body, {} if loop else bind(graph, known, body, args))
                  for body in [body_of(graph, op, attr) for attr in CALLS[op.type]]]
        total += int(trips) * max(flops for flops, _ in bodies)
        runs += int(trips) * max(body_runs for _, body_runs in bodies)
        continue
      try:
        if op.type in ('Conv2D', 'Conv2DBackpropInput', 'Conv2DBackpropFilter'):
          total += conv_op_flops(op)
        else:
          total += int(ops.get_stats_for_node_def(graph, op.node_def, 'flops').value or 0)
      except ValueError:
        notes.append(f'{op.name} ({op.type}): shape not fully known, not counted')
    return total, runs

  flops, runs = count(graph, {})
  return dict(flops=flops, ops=runs)
