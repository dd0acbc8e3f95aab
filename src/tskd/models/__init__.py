"""Models: the networks and their files, nothing about how they are trained.

``mini_sam``, ``mini_sam_files`` and ``sam_checkpoint`` (SAM architectures, a mini SAM's files
and checkpoints), ``teacher`` (SAM used prompt-free per class), ``lora`` (LoRA on the teacher and
its adapter files), ``student`` (the ViT-Tiny student), ``diffusion`` (the DDPM of stage 2),
``meta_file`` and ``meta_schema`` (a model folder's ``meta.json``: read, then what it may hold).
"""
