"""Fine-tuning a variant on a dataset: config, training, report."""
