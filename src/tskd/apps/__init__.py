"""Applications on top of the pipeline: the ``tskd`` command and the demo.

``cli`` (the ``tskd`` command, also ``python -m tskd``: arguments, the stage subcommands and
``run``), ``commands`` (the subcommands that train no stage), ``demo`` with ``demo_figures``
(the whole method on a procedural task, against its baselines) and ``pretraining_check`` (the
demo's comparison with a teacher trained from random initialisation).
"""
