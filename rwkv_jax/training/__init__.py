"""Training: data (text, binidx, Shakespeare), optimiser, loss, the sharded step, segments, checkpoints,
metrics and the loop ``train_and_evaluate(config, workdir)``. See configs/ and experiments/train.py."""
