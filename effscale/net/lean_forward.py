"""An eager forward pass of a functional Keras model that keeps only the live tensors.

Keras's own eager call of a functional model keeps every layer's output until the call
returns (``Function._run_through_graph`` fills one dict and never empties it), so a forward
pass holds all of the network's activations at once, as a training step does. BatchNorm
recalibration runs such passes in training mode, and on the grid's depth-only row that
was the worker's peak (benchmarks/grid_worker_memory.py --phases). This runs the same
layer calls in the same order, nested functional models included, and drops each tensor
after its last consumer: the outputs and every layer's side effects (BatchNorm's moving
statistics, seed generators) are the same, the memory is that of the widest cut.

It reads Keras's node graph (``_nodes_by_depth``, ``node.arguments``), which is not public
API; on a model or a Keras version without it, ``lean_call`` falls back to ``model(x)``.
"""

from __future__ import annotations

from collections import Counter


def lean_call(model, inputs, training: bool | None = None):
    """``model(inputs, training=training)``, holding only the tensors still to be used."""
    try:
        from keras.src.models.functional import Functional, operation_fn
        from keras.src import tree

        plan = _plan(model, Functional)
    except (ImportError, AttributeError, TypeError):
        return model(inputs, training=training)
    if plan is None:
        return model(inputs, training=training)
    outputs = _run(model, inputs, training, Functional, operation_fn, tree)
    return outputs[0] if len(outputs) == 1 else outputs


def _plan(model, functional_type):
    """The model's nodes in Keras's execution order, or None when it is not a plain functional model."""
    if not isinstance(model, functional_type):
        return None
    by_depth = model._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def _plain(kwargs) -> bool:
    # a nested model called with nothing but (None) mask and training, which the recursion passes on
    return all(value is None or name == "training" for name, value in kwargs.items())


def _run(model, inputs, training, functional_type, operation_fn, tree) -> list:
    flat_inputs = model._standardize_inputs(inputs)  # to tensors of the inputs' dtypes, as Keras's call does
    nodes = [n for n in _plan(model, functional_type) if n.operation and not n.is_input]
    uses = Counter(id(t) for node in nodes for t in node.input_tensors)
    uses.update(id(t) for t in model.outputs)
    values = {id(x): y for x, y in zip(model.inputs, flat_inputs)}
    for node in nodes:
        if any(id(t) not in values for t in node.input_tensors):
            continue  # not computable from these inputs, as Keras skips it
        args, kwargs = node.arguments.fill_in(values)
        operation = node.operation
        if isinstance(operation, functional_type) and _plain(kwargs):
            inner = training if training is not None else kwargs.get("training")  # as operation_fn decides
            outputs = _run(operation, args[0] if len(args) == 1 else list(args), inner, functional_type,
                           operation_fn, tree)
        else:
            outputs = operation_fn(operation, training=training)(*args, **kwargs)
        for x, y in zip(node.outputs, tree.flatten(outputs)):
            values[id(x)] = y
        del args, kwargs, outputs
        for t in node.input_tensors:
            uses[id(t)] -= 1
            if uses[id(t)] == 0:
                values.pop(id(t), None)
    return [values[id(x)] for x in model.outputs]
