"""Input gates on real DICOM files nobody here wrote (pydicom's test files,
pydicom-data, deid-data) and on our own phantoms: what a model may see, and the
reason it gives for what it refuses."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import deid_data
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files

from models.phantoms import head_ct
from server.imaging.dicom import read_dicom
from server.inference.cards import HeadCtGate, UltrasoundGate
from server.inference.gating import (
    Refused,
    check_frame_rate,
    check_frame_size,
    check_head_ct,
    check_head_hu,
    check_ultrasound_dicom,
)

DEID = Path(deid_data.__file__).parent / "data"
HEAD = HeadCtGate()
FAST = UltrasoundGate(min_size=(128, 128), min_fps=8.0, body_parts=["ABDOMEN"])


def real_dicom_files() -> list[Path]:
    """Every DICOM file the three packages install (deid-data's zipped cines aside)."""
    paths = {Path(p) for p in get_testdata_files("*") if p.endswith(".dcm")}
    paths |= set(DEID.rglob("*.dcm"))
    return sorted(paths, key=lambda p: p.name)


def deid_cine(tmp_path: Path, name: str) -> Path:
    with zipfile.ZipFile(DEID / "ultrasounds" / f"{name}.zip") as archive:
        archive.extract(f"{name}.dcm", tmp_path)
    return tmp_path / f"{name}.dcm"


def refusal(check, image, gate) -> str:
    with pytest.raises(Refused) as caught:
        check(image, gate)
    return str(caught.value)


def test_real_head_ct_slices_pass_the_head_ct_gate():
    for name in ("693_UNCR.dcm", "693_J2KR.dcm", "J2K_pixelrep_mismatch.dcm"):
        ct = check_head_ct(read_dicom(get_testdata_file(name)), HEAD)
        assert ct.hu.shape == (512, 512)
        assert ct.hu.min() < -900 and ct.hu.max() > 1000  # air and bone, in HU
        assert ct.provenance["source"] == name and ct.provenance["sop_instance_uid"]


def test_a_lossy_compressed_head_ct_is_refused():
    # The same slice as 693_UNCR, after a 339:1 lossy round trip (the model
    # trained on phantoms called it a bleed with p = 0.999; the original, 0.03).
    lossy = read_dicom(get_testdata_file("693_UNCI.dcm"))
    assert "lossy-compressed at 339:1" in refusal(check_head_ct, lossy, HEAD)


def test_a_neck_ct_is_refused_by_its_body_part_and_by_its_pixels_alone():
    neck = read_dicom(get_testdata_file("bad_sequence.dcm"))
    assert "body part NECK" in refusal(check_head_ct, neck, HEAD)
    # Without the tag (many files have none) the pixels give it away: no skull,
    # and what the bone encloses is not brain.
    untagged = dataclasses.replace(neck, body_part=None)
    reason = refusal(check_head_ct, untagged, HEAD)
    assert "skull" in reason or "brain-like" in reason, reason


def test_a_spine_ct_is_refused_as_too_small_to_be_a_head():
    spine = read_dicom(get_testdata_file("CT_small.dcm"))
    assert "smaller than a head" in refusal(check_head_ct, spine, HEAD)
    hu = spine.pixels().astype(np.float32) * spine.rescale_slope + spine.rescale_intercept
    with pytest.raises(Refused, match="not head-sized"):
        check_head_hu(hu, spine.pixel_spacing_mm, HEAD)


def test_the_ct_brain_drawing_is_refused_by_the_head_ct_gate():
    for name in ("ctbrain1.dcm", "ctbrain2.dcm"):
        drawing = read_dicom(DEID / "humans" / name)
        assert drawing.modality == "CT" and drawing.body_part == "HEAD"  # its labels lie
        assert "photometric interpretation YBR_FULL_422" in refusal(check_head_ct, drawing, HEAD)
        # Even read as if its pixels were stored CT values, they are no head.
        pixels = drawing.pixels()[..., 0].astype(np.float32)
        hu = pixels * drawing.rescale_slope + drawing.rescale_intercept
        with pytest.raises(Refused, match="do not look like head CT in Hounsfield units"):
            check_head_hu(hu, drawing.pixel_spacing_mm, HEAD)


def test_abdominal_ct_perfusion_maps_and_mr_are_refused_with_their_reason():
    pancreas = read_dicom(get_testdata_file("explicit_VR-UN.dcm"))
    assert "body part PANCREAS" in refusal(check_head_ct, pancreas, HEAD)
    assert "not head-sized" in refusal(check_head_ct,
                                       dataclasses.replace(pancreas, body_part=None), HEAD)
    perfusion = read_dicom(get_testdata_file("eCT_Supplemental.dcm"))
    assert "enhanced multi-frame" in refusal(check_head_ct, perfusion, HEAD)
    mr_head = read_dicom(get_testdata_file("emri_small.dcm"))
    assert "modality MR: this model reads CT only" in refusal(check_head_ct, mr_head, HEAD)
    tilted = dataclasses.replace(read_dicom(get_testdata_file("693_UNCR.dcm")),
                                 orientation=(1, 0, 0, 0, 0, -1))  # a coronal slice
    assert "not axial: the slice is tilted 90 degrees" in refusal(check_head_ct, tilted, HEAD)


def test_head_ct_phantoms_pass_the_gate_the_model_sits_behind():
    rng = np.random.default_rng(77)
    for _ in range(20):
        case = head_ct.generate(rng)
        check_head_hu(case.hu, (case.pixel_spacing_mm,) * 2, HEAD)


def test_real_greyscale_ultrasound_passes_and_colour_doppler_is_refused(tmp_path: Path):
    kidney = check_ultrasound_dicom(read_dicom(DEID / "ultrasounds" / "GREYSCALE_IMAGE.dcm"),
                                    FAST)
    assert kidney.frames.shape == (1, 768, 1024) and kidney.frames.dtype == np.uint8
    cine = check_ultrasound_dicom(read_dicom(deid_cine(tmp_path, "GREYSCALE_CINE")), FAST)
    assert cine.frames.shape == (27, 600, 800) and cine.fps == 30.0
    doppler = read_dicom(get_testdata_file("US1_UNCR.dcm"))  # power Doppler of a lymph node
    assert "in colour (Doppler or a colour map?)" in refusal(check_ultrasound_dicom, doppler,
                                                             FAST)
    small = read_dicom(get_testdata_file("color-pl.dcm"))
    assert "frame 256x120 is smaller than 128x128" in refusal(check_ultrasound_dicom, small, FAST)
    ct = read_dicom(get_testdata_file("693_UNCI.dcm"))
    assert "modality CT: this model reads ultrasound only" in refusal(check_ultrasound_dicom,
                                                                       ct, FAST)


def test_a_slow_cine_and_a_thoracic_body_part_are_refused_for_live_fast(tmp_path: Path):
    path = deid_cine(tmp_path, "GREYSCALE_CINE")
    ds = pydicom.dcmread(path)
    ds.CineRate = 4
    ds.BodyPartExamined = "CHEST"
    ds.save_as(tmp_path / "slow.dcm")
    slow = read_dicom(tmp_path / "slow.dcm")
    assert "body part CHEST" in refusal(check_ultrasound_dicom, slow, FAST)
    slow = dataclasses.replace(slow, body_part="ABDOMEN")
    assert "a cine at 4.0 frames/s" in refusal(check_ultrasound_dicom, slow, FAST)


def test_live_frames_are_checked_for_size_and_rate():
    check_frame_size(320, 240, FAST)
    check_frame_rate(30.0, FAST)
    with pytest.raises(Refused, match="frame 96x96 is smaller than 128x128"):
        check_frame_size(96, 96, FAST)
    with pytest.raises(Refused, match="5.0 frames/s"):
        check_frame_rate(5.0, FAST)
