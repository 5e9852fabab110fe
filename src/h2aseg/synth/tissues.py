"""Tissue classes of the phantom: CT value, CT texture and PET heterogeneity, and lookup tables by index.

The tissue map of a study holds indices into :data:`TISSUE_NAMES`; SUVs are drawn per study
(:func:`h2aseg.synth.pet.study_suvs`).
"""

from __future__ import annotations

import numpy as np

# name: (HU, HU texture amplitude, PET heterogeneity (log-normal sigma)); SUVs are drawn per study.
TISSUES: dict[str, tuple[float, float, float]] = {
    "air": (-1000.0, 0.0, 0.0),
    "fat": (-100.0, 10.0, 0.15),
    "muscle": (45.0, 8.0, 0.10),
    "viscera": (5.0, 45.0, 0.45),
    "lung": (-840.0, 35.0, 0.10),
    "mediastinum": (-70.0, 20.0, 0.12),
    "blood": (40.0, 4.0, 0.05),
    "myocardium": (45.0, 5.0, 0.25),
    "liver": (58.0, 5.0, 0.06),
    "spleen": (48.0, 5.0, 0.06),
    "kidney": (35.0, 6.0, 0.10),
    "urine_kidney": (12.0, 3.0, 0.10),
    "bladder": (8.0, 3.0, 0.03),
    "brain_gm": (38.0, 3.0, 0.08),
    "brain_wm": (28.0, 3.0, 0.08),
    "csf": (8.0, 3.0, 0.05),
    "cortical_bone": (1000.0, 120.0, 0.10),
    "marrow": (260.0, 60.0, 0.15),
    "airway": (-950.0, 20.0, 0.05),
    "salivary": (25.0, 6.0, 0.10),
    "tonsil": (45.0, 5.0, 0.12),
    "thyroid": (90.0, 8.0, 0.10),
    "table": (180.0, 40.0, 0.0),
    "eye": (10.0, 3.0, 0.05),
}
TISSUE_NAMES = tuple(TISSUES)
T = {name: i for i, name in enumerate(TISSUE_NAMES)}
LOW_DENSITY = ("lung", "fat", "mediastinum", "airway", "viscera", "air")
BONE = ("cortical_bone", "marrow")

LUT_HU = np.array([TISSUES[n][0] for n in TISSUE_NAMES], dtype=np.float32)
LUT_TEX = np.array([TISSUES[n][1] for n in TISSUE_NAMES], dtype=np.float32)
LUT_HET = np.array([TISSUES[n][2] for n in TISSUE_NAMES], dtype=np.float32)
IS_LOW = np.array([n in LOW_DENSITY for n in TISSUE_NAMES])
IS_BONE = np.array([n in BONE for n in TISSUE_NAMES])
IS_BODY = np.array([n not in ("air", "table") for n in TISSUE_NAMES])
