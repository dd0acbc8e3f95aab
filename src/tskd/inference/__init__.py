"""Inference: model bundles, prediction on images, stacks and large images, and metrics.

``bundle`` (a model folder's weights and ``meta.json``, ONNX export), ``predict`` (label maps and
probabilities, tiled where needed) and ``metrics`` (Dice, IoU and HD95 against ground truth).
"""
