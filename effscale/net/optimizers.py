"""Keras's Adam with a smaller traced update: the step's scalars are computed once, not per variable.

Keras 3's ``Adam.update_step`` recomputes the learning rate, the step count, both
``beta ** step`` powers and the bias correction for every variable it updates. Inside a
traced training step that is about a dozen extra graph operations per variable (a grid
proxy has about 300 variables), which TensorFlow builds in Python, optimises and
instantiates on every new network's first step. ``SharedScalarsAdam`` builds those
scalars once per ``apply`` and reuses them for every variable. The per-variable
arithmetic is Keras's, operation for operation, and the shared scalars are the values each
variable computed for itself, so every update is equal to Keras's to the bit
(``tests/test_optimizers.py``); only the trace is cheaper
(``python benchmarks/trace_optimizer.py``).

``FlatStateAdam`` goes one step further: one momentum and one velocity vector for all the
weights instead of one pair per weight, so a step is a dozen operations on one long
vector plus a split and about three operations per weight, instead of about a dozen
operations per weight. Every element still goes through Keras's operations in Keras's order, so the
updates stay equal to Keras's to the bit; its optimizer variables are the two flat
vectors instead of Keras's per-weight lists.

Keras is imported inside the functions: this module is importable without it.
"""

from __future__ import annotations

_CLASS = None
_FLAT_CLASS = None


def shared_scalars_adam(learning_rate):
    """A ``SharedScalarsAdam`` (Keras's ``Adam`` defaults otherwise) with this learning rate or schedule.

    Under torch it is Keras's own Adam: there Keras swaps in ``TorchAdam``, which updates all
    variables at once with other arithmetic (``torch._foreach_*``) and traces nothing.
    """
    import keras

    if keras.backend.backend() == "torch":
        return keras.optimizers.Adam(learning_rate)
    return _adam_class()(learning_rate)


def flat_state_adam(learning_rate):
    """A ``FlatStateAdam`` with this learning rate or schedule, under TensorFlow.

    For one model trained without a distribution strategy, as a grid proxy trial is: every
    weight it was built on must get a gradient at every step. Under JAX it is a
    ``SharedScalarsAdam``: XLA fuses the flat vector's operations differently from the
    per-weight ones and rounded one moment element in 210 differently in 5 steps
    (``tests/test_optimizers.py``). Under torch it is Keras's Adam (see above).
    """
    import keras

    global _FLAT_CLASS
    if keras.backend.backend() != "tensorflow":
        return shared_scalars_adam(learning_rate)
    if _FLAT_CLASS is None:
        _FLAT_CLASS = _define_flat(_adam_class())
    return _FLAT_CLASS(learning_rate)


def _adam_class():
    global _CLASS
    if _CLASS is None:
        _CLASS = _define()
    return _CLASS


def _define():
    import keras
    from keras import ops

    class SharedScalarsAdam(keras.optimizers.Adam):
        """``keras.optimizers.Adam`` whose ``update_step`` reuses one set of step scalars per ``apply``."""

        def apply(self, grads, trainable_variables=None):
            # A fresh cache per apply: the scalars depend on the step count and the
            # learning rate, and a traced function must not see tensors from another graph.
            self.__dict__["_step_scalars"] = {}
            try:
                return super().apply(grads, trainable_variables)
            finally:
                self.__dict__["_step_scalars"] = None

        def _scalars(self, learning_rate, dtype):
            cache = self.__dict__.get("_step_scalars")
            if cache is None:  # update_step called outside apply: nothing to share
                cache = {}
            key = str(dtype)
            if key not in cache:
                # Exactly Keras's expressions, in Keras's order.
                lr = ops.cast(learning_rate, dtype)
                local_step = ops.cast(self.iterations + 1, dtype)
                beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
                beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
                alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
                cache[key] = (alpha, ops.convert_to_tensor(1 - self.beta_1, dtype),
                              ops.convert_to_tensor(1 - self.beta_2, dtype),
                              ops.convert_to_tensor(self.epsilon, dtype))
            return cache[key]

        def update_step(self, gradient, variable, learning_rate):
            if self.amsgrad:
                return super().update_step(gradient, variable, learning_rate)
            alpha, one_minus_beta_1, one_minus_beta_2, epsilon = self._scalars(learning_rate, variable.dtype)
            gradient = ops.cast(gradient, variable.dtype)
            m = self._momentums[self._get_variable_index(variable)]
            v = self._velocities[self._get_variable_index(variable)]
            self.assign_add(m, ops.multiply(ops.subtract(gradient, m), one_minus_beta_1))
            self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), one_minus_beta_2))
            self.assign_sub(variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), epsilon)))

    return SharedScalarsAdam


def _define_flat(base):
    import keras
    import numpy as np
    from keras import ops

    class FlatStateAdam(base):
        """``SharedScalarsAdam`` with its moments in two flat vectors (single-dtype weights, no amsgrad)."""

        def build(self, var_list):
            if self.built:
                return
            dtypes = {keras.backend.standardize_dtype(v.dtype) for v in var_list}
            self._flat_sizes = None
            if self.amsgrad or len(dtypes) != 1:
                return super().build(var_list)  # Keras's per-weight state and update
            keras.optimizers.Optimizer.build(self, var_list)  # the step counter and the weight index
            self._flat_sizes = [int(np.prod(v.shape)) for v in var_list]
            size, dtype = sum(self._flat_sizes), dtypes.pop()
            self._flat_m = self.add_variable((size,), initializer="zeros", dtype=dtype, name="flat_momentum")
            self._flat_v = self.add_variable((size,), initializer="zeros", dtype=dtype, name="flat_velocity")

        def _backend_update_step(self, grads, trainable_variables, learning_rate):
            if self._flat_sizes is None:
                return super()._backend_update_step(grads, trainable_variables, learning_rate)
            if [self._get_variable_index(v) for v in trainable_variables] != list(range(len(self._flat_sizes))):
                raise ValueError("FlatStateAdam needs a gradient for every weight it was built on, in order")
            dtype = self._flat_m.dtype
            alpha, one_minus_beta_1, one_minus_beta_2, epsilon = self._scalars(learning_rate, dtype)
            # Keras's per-weight expressions (see update_step), each on all elements at once
            gradient = ops.concatenate([ops.reshape(ops.cast(g, dtype), (-1,)) for g in grads], axis=0)
            m, v = self._flat_m, self._flat_v
            self.assign_add(m, ops.multiply(ops.subtract(gradient, m), one_minus_beta_1))
            self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), one_minus_beta_2))
            update = ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), epsilon))
            ends = np.cumsum(self._flat_sizes)[:-1].tolist()
            parts = ops.split(update, ends) if ends else [update]
            for variable, part in zip(trainable_variables, parts):
                self.assign_sub(variable, ops.reshape(part, variable.shape))

    return FlatStateAdam
