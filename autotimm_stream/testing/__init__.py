"""Real parts for tests and benchmarks: a GStreamer RTSP server run as a subprocess (:mod:`.rtsp`).

Not used by the engine itself; ``tests/`` and ``benchmarks/`` share it.
"""
