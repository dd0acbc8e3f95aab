"""napari-tskd backend: task-specific knowledge distillation from SAM into a ViT-Tiny student.

The backend is headless: it never imports Qt or napari. Heavy modules (torch, SAM, diffusers)
are imported by the submodules that need them, so ``import tskd`` stays cheap.
"""

__version__ = "0.1.0"

from tskd.errors import TskdError, TskdInputError, TskdWarning  # noqa: E402

__all__ = ["TskdError", "TskdInputError", "TskdWarning", "__version__"]
