"""Training of the bundled model: synthetic scenes, the trainer and its evaluation.

Not needed to mine masks, so not part of the worker image or the wheel; run from a
checkout (`python -m training.train`, see training/README.md).
"""
