"""Reading a DICOM file into a typed description plus its pixels.

The header is read and described first (cheap, no pixel decoding), so that a
gate can refuse a file on its metadata before anything is decompressed. Any
file, however broken, either yields a DicomImage or raises DicomError with the
reason: nothing else escapes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError


class DicomError(Exception):
    """A file that is not usable DICOM (or whose pixels cannot be decoded)."""


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return out if len(out) == count else None


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _first_float(value: object) -> float | None:
    """A number, or the first of a multi-valued one (one ratio per lossy step)."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else None
    return _float(value)


@dataclass(frozen=True)
class DicomImage:
    """What the gates need to know about one DICOM image (single or multi-frame)."""

    source: str
    modality: str
    sop_instance_uid: str
    transfer_syntax: str
    photometric: str
    rows: int
    columns: int
    frames: int
    body_part: str | None = None
    image_type: tuple[str, ...] = ()
    #: (row spacing, column spacing) in mm, or None when the file states none.
    pixel_spacing_mm: tuple[float, float] | None = None
    #: ImageOrientationPatient: row and column direction cosines.
    orientation: tuple[float, ...] | None = None
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    #: Frames per second of a cine, when the file says.
    fps: float | None = None
    #: LossyImageCompression is "01": the pixels were altered by a lossy codec.
    lossy: bool = False
    lossy_ratio: float | None = None
    description: str = ""
    _dataset: pydicom.Dataset = field(repr=False, compare=False, default=None)  # type: ignore

    def pixels(self, frame: int | None = None) -> np.ndarray:
        """Decoded pixels: [rows, cols] or [frames, rows, cols] (greyscale), with
        a trailing channel axis of 3 for colour (YBR is converted to RGB and
        PALETTE COLOR applied); one frame only when `frame` is given. Raises
        DicomError when the file's codec cannot be decoded here."""
        ds = self._dataset
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if frame is None:
                    array = ds.pixel_array
                else:
                    from pydicom.pixels import pixel_array
                    array = pixel_array(ds, index=frame)
                if self.photometric == "PALETTE COLOR":
                    from pydicom.pixels import apply_color_lut
                    array = apply_color_lut(array, ds)
                    if array.dtype != np.uint8:  # 16-bit LUT entries
                        array = (array / 257).astype(np.uint8)
        except Exception as exc:  # pydicom and its plugins raise many types
            raise DicomError(f"pixel data ({self.transfer_syntax}) cannot be decoded: "
                             f"{str(exc).splitlines()[0][:200]}") from None
        return np.asarray(array)


def read_dicom(path: Path | str) -> DicomImage:
    """Read and describe a DICOM file (pixels are decoded later, on demand)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as exc:
        raise DicomError(f"{path.name}: not a readable DICOM file: {exc}") from None
    except Exception as exc:  # a truncated or garbled file can fail anywhere in the parser
        raise DicomError(f"{path.name}: not a readable DICOM file: "
                         f"{type(exc).__name__}: {exc}") from None
    if "PixelData" not in ds:
        raise DicomError(f"{path.name}: the file holds no image (no Pixel Data)")
    try:
        fps = None
        if ds.get("CineRate"):
            fps = _float(ds.CineRate)
        elif ds.get("FrameTime"):
            frame_ms = _float(ds.FrameTime)
            fps = 1000.0 / frame_ms if frame_ms else None
        elif ds.get("RecommendedDisplayFrameRate"):
            fps = _float(ds.RecommendedDisplayFrameRate)
        spacing = _floats(ds.get("PixelSpacing"), 2)
        if spacing is None and ds.get("SequenceOfUltrasoundRegions"):
            region = ds.SequenceOfUltrasoundRegions[0]
            # physical units 3 = cm: the region's scale, in mm per pixel
            if region.get("PhysicalUnitsXDirection") == 3 and region.get("PhysicalDeltaX"):
                spacing = (abs(float(region.PhysicalDeltaY)) * 10,
                           abs(float(region.PhysicalDeltaX)) * 10)
        return DicomImage(
            source=path.name,
            modality=str(ds.get("Modality", "")).strip().upper(),
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
            transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "unknown")),
            photometric=str(ds.get("PhotometricInterpretation", "")).strip().upper(),
            rows=int(ds.Rows), columns=int(ds.Columns),
            frames=int(_float(ds.get("NumberOfFrames")) or 1),
            body_part=(str(ds.get("BodyPartExamined")).strip().upper()
                       if ds.get("BodyPartExamined") else None),
            image_type=tuple(str(v).strip().upper() for v in (ds.get("ImageType") or ())),
            pixel_spacing_mm=spacing,
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            rescale_slope=_float(ds.get("RescaleSlope")) or 1.0,
            rescale_intercept=_float(ds.get("RescaleIntercept")) or 0.0,
            fps=fps,
            lossy=str(ds.get("LossyImageCompression", "")).strip() == "01",
            lossy_ratio=_first_float(ds.get("LossyImageCompressionRatio")),
            description=" ".join(str(ds.get(k, "")) for k in ("StudyDescription",
                                                               "SeriesDescription")).strip(),
            _dataset=ds)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DicomError(f"{path.name}: header incomplete: {exc}") from None
