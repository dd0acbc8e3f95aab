"""How far apart are the ct_abdomen organs in brightness, as the models see them?

    python benchmarks/ct_contrast.py

Ten generated slices (seed 5, not the benchmark's draws) go through `tskd.data.dataset.to_float_rgb`
twice: with the default per-image percentile window (what the pipeline uses when no contrast
limits are given) and with the soft-tissue window the napari sample uses. Prints the mean input
intensity of each class; writes benchmarks/results/ct_contrast.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tskd.data import phantoms
from tskd.data.dataset import to_float_rgb

RESULTS = Path(__file__).parent / "results"
WINDOWS = {"percentile (default)": None, "soft-tissue window": (1024 - 160, 1024 + 240)}


def main() -> None:
    pairs = phantoms.generate("ct_abdomen", 10, size=256, seed=5)
    names = phantoms.TASKS["ct_abdomen"].class_names
    out: dict[str, dict[str, float]] = {}
    for label, window in WINDOWS.items():
        values: dict[str, list[float]] = {name: [] for name in names}
        for image, lab in pairs:
            unit = to_float_rgb(image, window)[..., 0]
            for c, name in enumerate(names):
                if (lab == c).any():
                    values[name].append(float(unit[lab == c].mean()))
        out[label] = {name: float(np.mean(v)) for name, v in values.items() if v}
        print(label, {name: round(v, 3) for name, v in out[label].items()})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ct_contrast.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
