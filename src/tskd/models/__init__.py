"""Models: the networks and their files, nothing about how they are trained.

``mini_sam`` and ``sam_checkpoint`` (SAM architectures and checkpoints), ``teacher`` (SAM used
prompt-free per class), ``lora`` (LoRA on the teacher and its adapter files), ``student`` (the
ViT-Tiny student), ``diffusion`` (the DDPM of stage 2) and ``meta_schema`` (what a model folder's
``meta.json`` may hold).
"""
