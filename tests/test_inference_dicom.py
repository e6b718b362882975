"""Real DICOM files nobody here wrote, through gate and model: each is either
scored by the matching shipped model (with its provenance) or refused with a
reason; none crashes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from server.imaging.dicom import DicomError, read_dicom
from server.inference.gating import Refused, check_head_ct, check_ultrasound_dicom
from server.inference.registry import DEFAULT_MODELS_DIR, ModelRegistry
from server.inference.runtime import InferenceRuntime
from tests.test_gating import deid_cine, real_dicom_files


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.load(DEFAULT_MODELS_DIR)


async def test_every_real_ct_and_ultrasound_file_is_scored_or_refused(registry: ModelRegistry,
                                                                      tmp_path: Path):
    ct_model, us_model = registry.get("head_ct_ich"), registry.get("fast_free_fluid")
    runtime = InferenceRuntime()
    scored: dict[str, list[float]] = {}
    refused: dict[str, str] = {}
    files = real_dicom_files() + [deid_cine(tmp_path, "GREYSCALE_CINE")]
    try:
        for path in files:
            try:
                image = read_dicom(path)
            except DicomError as exc:
                refused[path.name] = str(exc)
                continue
            try:
                if image.modality == "CT":
                    ct = check_head_ct(image, ct_model.card.gate)
                    results = await runtime.head_ct(ct_model, [ct])
                elif image.modality == "US":
                    us = check_ultrasound_dicom(image, us_model.card.gate, max_frames=3)
                    results = [await runtime.ultrasound(us_model, frame,
                                                        dict(us.provenance, frame=i))
                               for i, frame in zip(us.provenance["frames"], us.frames)]
                else:
                    continue
            except Refused as exc:
                refused[path.name] = str(exc)
                continue
            for result in results:
                assert 0.0 <= result.probability <= 1.0 and math.isfinite(result.probability)
                assert result.provenance["source"] == path.name
                assert result.provenance["sop_instance_uid"]
                assert result.model in ("head_ct_ich", "fast_free_fluid") and result.version
            scored[path.name] = [round(r.probability, 3) for r in results]
    finally:
        runtime.close()
    print("scored:", scored)
    print("refused:", refused)
    assert {"693_UNCR.dcm", "693_J2KR.dcm", "GREYSCALE_IMAGE.dcm",
            "GREYSCALE_CINE.dcm"} <= set(scored)
    for name in ("bad_sequence.dcm", "CT_small.dcm", "ctbrain1.dcm", "ctbrain2.dcm",
                 "explicit_VR-UN.dcm", "693_UNCI.dcm", "693_J2KI.dcm"):
        assert name in refused and refused[name], name
