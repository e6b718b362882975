"""Procedural phantoms: synthetic ultrasound B-mode frames and head-CT slices with
their ground truth, made from a seed with numpy and OpenCV only (no PyTorch), so
that the tests can regenerate held-out sets and check the model cards."""
