"""Symmetric decoys: mirrored, unlabelled hot spots; lesions never take both sides of a station pair."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from h2aseg.cli import app
from h2aseg.synth import PhantomError, synth_case, write_cohort
from h2aseg.synth.decoys import DECOY_STATIONS, PARTNER_SPREAD, parse_pairs
from h2aseg.synth.lesions import NODE_STATIONS, mirror_station

GRID = {"shape": (64, 64, 80), "spacing": (8.0, 8.0, 10.0)}


@pytest.fixture(scope="module")
def decoy_studies() -> list[dict]:
    """Studies with 2-3 decoy pairs and 8 lesions each (so that nodes and decoys compete for stations)."""
    return [
        synth_case("wholebody", seed=s, n_lesions=8, lesion_free=False, symmetric_decoys=(2, 3), **GRID)
        for s in range(4)
    ]


def _value_at(res: dict, key: str, center_mm: list[float]) -> float:
    """The image ``key``'s value at a world point (nearest voxel of the CT grid)."""
    ijk = np.rint(np.linalg.solve(res[f"{key}_affine"], [*center_mm, 1.0])[:3]).astype(int)
    return float(res[key][tuple(np.clip(ijk, 0, np.asarray(res[key].shape) - 1))])


def test_decoys_come_in_mirrored_pairs_of_like_size_and_uptake(decoy_studies: list[dict]) -> None:
    for res in decoy_studies:
        decoys = res["meta"]["decoys"]
        assert 4 <= len(decoys) <= 6  # 2-3 pairs, both sides inside the body on this grid
        pairs: dict[int, list[dict]] = {}
        for d in decoys:
            assert d["label"] == 0 and d["site"].startswith("decoy:") and d["voxels"] > 0
            pairs.setdefault(d["pair"], []).append(d)
        for right, left in pairs.values():
            assert mirror_station(right["site"][6:]) == left["site"][6:]
            assert right["site"][6:-2] in DECOY_STATIONS
            assert abs(left["suv"] / right["suv"] - 1) <= PARTNER_SPREAD + 1e-3
            assert abs(left["diameter_mm"] / right["diameter_mm"] - 1) <= PARTNER_SPREAD + 1e-2
            assert right["center_mm"][0] * left["center_mm"][0] < 0  # opposite sides of the body


def test_decoys_are_hot_in_pet_and_never_labelled(decoy_studies: list[dict]) -> None:
    for res in decoy_studies:
        for d in res["meta"]["decoys"]:
            assert _value_at(res, "label", d["center_mm"]) == 0
            if d["diameter_mm"] >= 20:  # small ones lose their peak to the PET's blur on 8 mm voxels
                assert _value_at(res, "pet", d["center_mm"]) > 1.5, d
        assert res["label"].any()  # the lesions are labelled as before


def test_no_lesion_takes_both_sides_of_a_pair_nor_shares_a_pair_with_decoys(
    decoy_studies: list[dict],
) -> None:
    for res in decoy_studies:
        nodes = {les["site"][5:] for les in res["meta"]["lesions"] if les["site"].startswith("node:")}
        assert not any(mirror_station(n) in nodes for n in nodes), nodes
        decoy_pairs = {d["site"][6:-2] for d in res["meta"]["decoys"]}
        assert not any(n[:-2] in decoy_pairs for n in nodes if n in NODE_STATIONS and mirror_station(n))


def test_decoys_change_a_study_only_around_themselves() -> None:
    """Drawn from their own stream after the lesions: a lesion-free study with decoys has the label, CT and
    PET of the same study without them, except within reach of a decoy (its radius, the PET's blur)."""
    plain = synth_case("wholebody", seed=4, lesion_free=True, **GRID)
    with_decoys = synth_case("wholebody", seed=4, lesion_free=True, symmetric_decoys=(2, 3), **GRID)
    assert "decoys" not in plain["meta"] and len(with_decoys["meta"]["decoys"]) >= 4
    np.testing.assert_array_equal(plain["label"], with_decoys["label"])
    ijk = np.stack(np.meshgrid(*map(np.arange, plain["pet"].shape), indexing="ij"), -1)
    world = ijk @ plain["pet_affine"][:3, :3].T + plain["pet_affine"][:3, 3]
    near = np.zeros(plain["pet"].shape, bool)
    for d in with_decoys["meta"]["decoys"]:  # radius + 3 PET FWHM (7 mm at most) + a voxel diagonal
        near |= np.linalg.norm(world - d["center_mm"], axis=-1) <= d["diameter_mm"] / 2 + 21 + 16
    assert near.any() and not near.all()
    for key in ("ct", "pet"):
        assert not np.array_equal(plain[key][near], with_decoys[key][near]), key
        np.testing.assert_array_equal(plain[key][~near], with_decoys[key][~near])


@pytest.mark.parametrize(
    ("text", "message"),
    [("a", "e.g. 1,3"), ("3,1", "LO <= HI"), ("1,9", "<= 5"), ("-1,2", "0 <= LO"), ("1,2,3", "LO,HI")],
)
def test_a_bad_range_is_refused_naming_the_option(text: str, message: str) -> None:
    with pytest.raises(PhantomError, match="--symmetric-decoys") as e:
        parse_pairs(text)
    assert message in str(e.value)


def test_a_range_reads_as_lo_hi_or_one_number() -> None:
    assert parse_pairs("1,3") == (1, 3) and parse_pairs("2") == (2, 2) and parse_pairs("0") == (0, 0)


def test_head_and_neck_and_follow_up_cohorts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PhantomError, match="head and neck"):
        write_cohort(tmp_path / "hn", 2, "hecktor", 0, symmetric_decoys=(1, 2))
    with pytest.raises(PhantomError, match="follow-up"):
        write_cohort(tmp_path / "fu", 2, "autopet", 0, followup=True, symmetric_decoys=(1, 2))
    assert not (tmp_path / "hn").exists() and not (tmp_path / "fu").exists()  # refused before writing
    with pytest.raises(PhantomError, match="headneck"):
        synth_case("headneck", seed=0, shape=(24, 24, 24), symmetric_decoys=(1, 1))


def test_the_command_writes_and_records_a_decoy_cohort(tmp_path: Path) -> None:
    out = tmp_path / "decoys"
    args = ["synth", "--out", str(out), "--cases", "2", "--seed", "3", "--shape", "48", "48", "64"]
    args += ["--spacing", "8", "8", "10", "--symmetric-decoys", "1,2", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1-2 symmetric decoy pairs a study" in result.output
    doc = json.loads((out / "phantom.json").read_text())
    assert doc["symmetric_decoys"] == [1, 2]
    assert all(1 <= len({d["pair"] for d in c["decoys"]}) <= 2 for c in doc["cases"])
    bad = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--symmetric-decoys", "7"])
    assert bad.exit_code == 2 and "--symmetric-decoys '7'" in bad.output
