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

Keras is imported inside the functions: this module is importable without it.
"""

from __future__ import annotations

_CLASS = None


def shared_scalars_adam(learning_rate):
    """A ``SharedScalarsAdam`` (Keras's ``Adam`` defaults otherwise) with this learning rate or schedule.

    Under torch it is Keras's own Adam: there Keras swaps in ``TorchAdam``, which updates all
    variables at once with other arithmetic (``torch._foreach_*``) and traces nothing.
    """
    import keras

    if keras.backend.backend() == "torch":
        return keras.optimizers.Adam(learning_rate)
    return _adam_class()(learning_rate)


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
