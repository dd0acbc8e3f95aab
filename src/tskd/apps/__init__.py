"""Applications on top of the pipeline: the ``tskd`` command and the demo.

``cli`` (the ``tskd`` command, also ``python -m tskd``), ``demo`` with ``demo_figures`` (the whole
method on a procedural task, against its baselines) and ``pretraining_check`` (the demo's
comparison with a teacher trained from random initialisation).
"""
