"""Everything that defines or produces a model: architecture, preprocessing, checkpoints, training.

Nothing here imports the HTTP service, so a checkpoint trained today is served with the same code.
"""
