"""Training biLMs as bilm-tf does: data streams, sampled softmax, the trainer, evaluation."""
