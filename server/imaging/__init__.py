"""Medical images at the edge: DICOM files decoded and described, once, as typed objects."""
