"""Reports: per-tile memory, per-step cycles, JSON, HTML and Perfetto traces."""

from softipu.profile.report import SCHEMA, VERSION, Report

__all__ = ["Report", "SCHEMA", "VERSION"]
