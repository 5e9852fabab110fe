"""A synthetic PET/CT phantom: whole-body (AutoPET-like) and head-and-neck (HECKTOR-like) studies.

The anatomy is a set of analytic shapes (ellipsoids, elliptic cross-sections along z, rings, boxes) in world
coordinates (RAS+ mm), rasterised by point sampling on any axis-aligned grid, so one patient can be imaged on
the CT grid and on a different PET grid. A canonical adult (vertex at d = 0 mm to mid-thigh at d = 1000 mm) is
scaled to the grid's physical extent, so a small demo grid still shows a whole body; lesions are sized in real
millimetres. Each tissue has a CT value (HU + texture) and a study-dependent SUV; PET is then blurred by a
Gaussian point-spread function (FWHM 6-7 mm) and given count-dependent, spatially correlated noise. See
``docs/phantom.md`` for what is and is not modelled.

:func:`synth_case` makes one study (arrays + affines + metadata); :func:`write_cohort` writes a cohort in a
real dataset layout (``autopet``, ``autopet-nnunet``, ``hecktor`` or ``csv``) and returns its cases.

Modules: :mod:`~h2aseg.synth.shapes` (analytic shapes, grids), :mod:`~h2aseg.synth.tissues`,
:mod:`~h2aseg.synth.anatomy`, :mod:`~h2aseg.synth.lesions`, :mod:`~h2aseg.synth.ct`, :mod:`~h2aseg.synth.pet`
(uptake, PSF, noise), :mod:`~h2aseg.synth.study` (:func:`synth_case`) and :mod:`~h2aseg.synth.cohort`
(:func:`write_cohort`: layouts through :mod:`h2aseg.data.layouts`' naming, ``phantom.json``);
:mod:`~h2aseg.synth.variability` (ranges of anatomy, uptake and scanner: levels ``default``, ``wide``,
``out-of-range``) and :mod:`~h2aseg.synth.variability_file` (the same from YAML); follow-up studies
(``write_cohort(..., followup=True)``): :mod:`~h2aseg.synth.lesion_changes` (how lesions change),
:mod:`~h2aseg.synth.repositioning` (the patient's rigid motion) and :mod:`~h2aseg.synth.followup`
(:func:`followup_pairs`: the known correspondences, read back from ``phantom.json``). Symmetric decoys
(``write_cohort(..., symmetric_decoys=(LO, HI))``): :mod:`~h2aseg.synth.decoys`, read back by
:func:`decoy_sites`. This package uses
:mod:`h2aseg.data`; :mod:`h2aseg.data` does not import it.
"""

from h2aseg.synth.cohort import (
    HECKTOR_CENTRES,
    LAYOUT_KIND,
    LesionSite,
    check_output_dir,
    cohort_plan,
    decoy_sites,
    lesion_sites,
    phantom_sites,
    write_cohort,
)
from h2aseg.synth.errors import PhantomError
from h2aseg.synth.followup import FollowupPair, LesionLink, followup_pairs
from h2aseg.synth.repositioning import Repositioning
from h2aseg.synth.study import DEFAULT_SHAPE, DEFAULT_SPACING, KINDS, PHANTOM_VERSION, synth_case
from h2aseg.synth.tissues import TISSUE_NAMES, TISSUES
from h2aseg.synth.variability import LEVELS, Span, Variability
from h2aseg.synth.variability_file import load_variability, resolve_variability

__all__ = [
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "HECKTOR_CENTRES",
    "KINDS",
    "LAYOUT_KIND",
    "LEVELS",
    "PHANTOM_VERSION",
    "TISSUES",
    "TISSUE_NAMES",
    "FollowupPair",
    "LesionLink",
    "LesionSite",
    "PhantomError",
    "Repositioning",
    "Span",
    "Variability",
    "check_output_dir",
    "cohort_plan",
    "decoy_sites",
    "followup_pairs",
    "lesion_sites",
    "load_variability",
    "phantom_sites",
    "resolve_variability",
    "synth_case",
    "write_cohort",
]
