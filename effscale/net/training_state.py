"""Create a compiled model's optimizer, loss and metric variables before its first step.

Under TensorFlow without a distribution strategy, Keras 3 defers creating these variables
to the first traced training step. A ``tf.function`` that creates variables on its first
call is traced a second time, so the first step paid for two traces of the whole
forward, backward and update graph: for the grid's proxy networks the first step took
about 1.4x as long (``python benchmarks/trace_once.py``). Keras's own symbolic build
creates them from shapes alone, as it already does under a distribution strategy and on
the other backends.
"""

from __future__ import annotations


def create_training_variables(model) -> None:
    """Build everything ``model.compile`` left unbuilt, without running the model on data.

    Uses Keras's ``Trainer._symbolic_build`` (Keras 3) where it exists; otherwise only the
    optimizer, through its public ``build``. Shapes come from the model's own inputs and
    outputs, so this is for one-input, one-output functional models with dense labels,
    which are all effscale trains.
    """
    symbolic_build = getattr(model, "_symbolic_build", None)
    if symbolic_build is not None and len(model.inputs) == 1 and len(model.outputs) == 1:
        symbolic_build(data_batch=(model.inputs[0], model.outputs[0], None))
    elif not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
