"""The application: building a pipeline from a config, the control channel, the HTTP server, the demo.

Everything here wires the engine's parts together; nothing below ``app`` imports from it.
"""

from .build import build_pipeline, build_sinks, build_source, build_sources, write_report, write_summary

__all__ = ["build_pipeline", "build_source", "build_sinks", "build_sources", "write_report", "write_summary"]
