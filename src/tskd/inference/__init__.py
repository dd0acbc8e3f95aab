"""Inference: model bundles, prediction on images, stacks and large images, and metrics.

``bundle`` (a model folder's weights and ``meta.json``, ONNX export), ``segmenter`` (label maps
and probabilities of arrays, tiled where needed), ``predict`` (from a model folder: files to
label-map files, a labelled folder scored, annotation ranking), ``dice`` (the one Dice rule),
``metrics`` (Dice, IoU and HD95 against ground truth) and ``label_folders`` (folders of
predictions and ground truth read for ``tskd evaluate``).
"""
