"""Keep torch's optional Triton import from crashing napari on Mesa (llvmpipe) OpenGL.

What happens: napari's canvas needs OpenGL; on machines without a GPU driver (VMs, remote
desktops, Xvfb, many laptops' fallback) Mesa renders with llvmpipe, which loads ``libLLVM`` into
the process. Importing ``triton`` afterwards (``timm`` -> ``torchvision.ops`` -> ``torch._dynamo``
-> ``triton``) loads Triton's own, different LLVM and the process dies with a segmentation fault,
in whichever thread does the import. Importing it *before* the viewer exists is fine, but a plugin
cannot choose that. Inference in the viewer never needs Triton (no ``torch.compile``), and training
runs in a separate process without OpenGL, so in exactly this situation the plugin marks
``triton`` as unavailable (torch then behaves as if it were not installed). Nothing changes on
machines whose OpenGL does not load libLLVM, or when Triton is already imported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def llvm_loaded() -> bool:
    """True when a libLLVM shared library is mapped into this process (Linux only)."""
    maps = Path("/proc/self/maps")
    try:
        return "libLLVM" in maps.read_text()
    except OSError:
        return False


def prepare_torch_import() -> bool:
    """Call in the GUI process before importing torch-using modules; True if triton was blocked.

    Also lets OpenMP threads of this process sleep rather than spin while waiting (when torch is
    not loaded yet and the user did not choose): the viewer's process must not burn the cores a
    training process or the rendering needs.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "triton" in sys.modules:
        return sys.modules["triton"] is None
    if not llvm_loaded():
        return False
    sys.modules["triton"] = None  # `import triton` now raises ImportError: torch skips it
    return True
