"""The benchmark suite's code; ``benchmarks/suite.py`` is its one entry point.

``python benchmarks/suite.py`` puts ``benchmarks/`` first on ``sys.path``, so this package imports
as ``lib`` with no path set-up; its modules import each other relatively. None of them has a
command line of its own.

- ``common``: modes, constants, target values, bounded attempts, machine info, JSON output;
- ``inputs``: clips and bundles, made once and cached;
- ``throughput``: model only, the engine on a file, the naive loops (sections classifier, detector,
  segmentor; ``--only paired``);
- ``roboflow``: Roboflow's InferencePipeline on the same bundle (section roboflow);
- ``live``, ``live_sections``: real RTSP streams (sections latency, capacity, soak;
  ``--only overload,sweep``);
- ``tasks``: the detector and the segmentor across runtimes (``--only runtimes``);
- ``report``, ``plots``: targets, results.md, the console summary, the PNGs;
- ``cpumeter``: cores busy (standard library only).

``roboflow_worker.py`` is not a module of this package: a standalone script that ``roboflow`` runs
by path with the Roboflow venv's python (see its docstring).
"""
