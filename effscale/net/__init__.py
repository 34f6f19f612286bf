"""The network: architecture as data, scaling rules and cost arithmetic (pure Python), and the Keras builder."""
