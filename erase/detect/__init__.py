"""Detectors behind one interface, and the counting protocols applied to their detections."""

from erase.detect.base import Detection, Detector

__all__ = ["Detection", "Detector"]
