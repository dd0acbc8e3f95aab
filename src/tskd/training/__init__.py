"""Training: one module per stage, each running through ``tskd.engine.train``.

``teacher`` (stage 1, adapt SAM with LoRA), ``synthesize`` with ``diffusion`` (stage 2, the
transfer set's synthetic images from a DDPM), ``teacher_cache`` and ``distill`` (stage 3, distil
the teacher into the student), ``finetune`` (stage 4, fine-tune the student) and ``pretrain``
(the built-in mini teacher's promptable pretraining).
"""
