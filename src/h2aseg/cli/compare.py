"""``h2aseg compare``: a follow-up study against its baseline (lesions matched, changes, PERCIST-style
category, ``compare.html``); ``docs/followup.md``."""

from __future__ import annotations

from pathlib import Path

import typer

from h2aseg.cli.common import err_console, fail


def compare(
    baseline: Path | None = typer.Option(
        None, "--baseline", help="Baseline study folder (AutoPET: CTres.nii.gz or CT.nii.gz, and SUV.nii.gz)."
    ),
    baseline_ct: Path | None = typer.Option(
        None, "--baseline-ct", help="Baseline CT (instead of the folder's)."
    ),
    baseline_pet: Path | None = typer.Option(
        None, "--baseline-pet", help="Baseline PET in SUV (instead of the folder's)."
    ),
    baseline_mask: Path = typer.Option(
        ..., "--baseline-mask", help="Baseline lesion mask (labels), on the baseline CT's or PET's grid."
    ),
    baseline_patient: str | None = typer.Option(
        None, "--baseline-patient", help="Baseline patient id [AutoPET patient folder or mask name]."
    ),
    followup: Path | None = typer.Option(None, "--followup", help="Follow-up study folder (as --baseline)."),
    followup_ct: Path | None = typer.Option(
        None, "--followup-ct", help="Follow-up CT (instead of the folder's)."
    ),
    followup_pet: Path | None = typer.Option(
        None, "--followup-pet", help="Follow-up PET in SUV (instead of the folder's)."
    ),
    followup_mask: Path = typer.Option(
        ..., "--followup-mask", help="Follow-up lesion mask (labels), on the follow-up CT's or PET's grid."
    ),
    followup_patient: str | None = typer.Option(
        None, "--followup-patient", help="Follow-up patient id [AutoPET patient folder or mask name]."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: lesions.csv, patient.csv, registration.json, compare.html."
    ),
    allow_different_patients: bool = typer.Option(
        False,
        "--allow-different-patients",
        help="Compare studies whose patient ids differ (a phantom, a test).",
    ),
    no_register: bool = typer.Option(
        False, "--no-register", help="Skip the rigid CT alignment: take both scanners' world frames as one."
    ),
    max_iterations: int = typer.Option(
        100, "--max-iterations", min=1, help="Optimiser steps per resolution level of the alignment."
    ),
    liver_roi: Path | None = typer.Option(
        None,
        "--liver-roi",
        help="Liver reference region in the baseline (any grid of its world), used as given; carried to the "
        "follow-up by the alignment.",
    ),
    liver_mask: Path | None = typer.Option(
        None,
        "--liver-mask",
        help="Whole-liver mask in the baseline: our 3 cm sphere at its deepest point is the reference.",
    ),
    followup_liver_roi: Path | None = typer.Option(
        None,
        "--followup-liver-roi",
        help="Liver reference region in the follow-up (instead of the carried one).",
    ),
) -> None:
    """Align the follow-up CT to the baseline CT (rigid), match the lesions, and write the changes of volume,
    SUVmax, SUVpeak and TLG, the patient-level changes and a PERCIST-style category (SUV body weight, not
    SUL)."""
    from datetime import datetime

    from h2aseg.errors import H2ASegError
    from h2aseg.followup.comparison import LiverInputs, compare_studies, write_outputs
    from h2aseg.followup.registration import identity, register_rigid
    from h2aseg.followup.report import write_compare_page
    from h2aseg.followup.studies import check_same_patient, load_study

    if liver_roi is not None and liver_mask is not None:
        raise fail("give --liver-roi (a region used as given) or --liver-mask (our 3 cm sphere), not both")
    try:
        base = load_study(
            "baseline", folder=baseline, ct=baseline_ct, pet=baseline_pet, mask=baseline_mask,
            patient_id=baseline_patient,
        )  # fmt: skip
        fu = load_study(
            "follow-up", folder=followup, ct=followup_ct, pet=followup_pet, mask=followup_mask,
            patient_id=followup_patient,
        )  # fmt: skip
        checked = check_same_patient(base, fu, allow_different_patients)
        rigid = (
            identity(base.ct, fu.ct)
            if no_register
            else register_rigid(base.ct, fu.ct, max_iterations=max_iterations)
        )
        liver = LiverInputs(roi=liver_roi, mask=liver_mask, followup_roi=followup_liver_roi)
        c = compare_studies(base, fu, rigid, patient_check=checked, liver=liver)
        paths = write_outputs(c, out)
        settings: dict[str, object] = {
            "baseline CT": base.ct.path,
            "baseline PET": base.pet.path,
            "baseline mask": baseline_mask,
            "follow-up CT": fu.ct.path,
            "follow-up PET": fu.pet.path,
            "follow-up mask": followup_mask,
            "alignment": "none (--no-register)"
            if no_register
            else f"rigid, <= {max_iterations} steps per level",
            "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        paths.append(write_compare_page(out / "compare.html", c, settings))
    except (H2ASegError, OSError) as e:
        raise fail(str(e)) from None
    status = [p.status for p in c.pairs]
    pb, pf = c.q_baseline.patient, c.q_followup.patient
    err_console.print(
        f"{checked}; alignment: rotation {rigid.rotation_deg:.2f} deg, translation "
        f"{', '.join(f'{v:.1f}' for v in rigid.translation_mm)} mm, body Dice "
        f"{rigid.body_dice_before:.3f} -> {rigid.body_dice_after:.3f}",
        highlight=False,
    )
    err_console.print(
        f"{status.count('matched')} matched, {status.count('new')} new, {status.count('vanished')} vanished "
        f"lesion(s); MTV {pb.mtv_ml:.3g} -> {pf.mtv_ml:.3g} ml, TLG {pb.tlg:.4g} -> {pf.tlg:.4g}; "
        f"PERCIST-style: {c.category.category} ({c.category.reason})",
        highlight=False,
    )
    err_console.print(f"wrote {', '.join(map(str, paths))}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
