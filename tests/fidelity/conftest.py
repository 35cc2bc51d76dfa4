"""Session fixtures of the exactness suite: the PNG frames, the checkpoints, AutoTimm's answers, the
engine's answers. Each is made once, on first use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .checkpoints import Cases
from .engine import Engine
from .frames import write_frames
from .reference import Reference, reference


@pytest.fixture(scope="session")
def frames_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fidelity_frames")
    write_frames(folder)
    return folder


@pytest.fixture(scope="session")
def frames(frames_dir: Path) -> dict[str, np.ndarray]:
    """Frame name -> its RGB pixels as the engine's folder source reads them (OpenCV)."""
    import cv2

    return {p.name: cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(frames_dir.glob("*.png"))}


@pytest.fixture(scope="session")
def cases(tmp_path_factory: pytest.TempPathFactory, frames_dir: Path) -> Cases:
    return Cases(tmp_path_factory.mktemp("fidelity_ckpt"), frames_dir)


class References:
    """AutoTimm's answers per case, computed once."""

    def __init__(self, cases: Cases):
        self.cases = cases
        self.done: dict[str, dict[str, Reference]] = {}

    def __call__(self, name: str) -> dict[str, Reference]:
        if name not in self.done:
            self.done[name] = reference(self.cases(name))
        return self.done[name]


@pytest.fixture(scope="session")
def references(cases: Cases) -> References:
    return References(cases)


@pytest.fixture(scope="session")
def engine(cases: Cases, frames_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(cases, frames_dir, tmp_path_factory.mktemp("fidelity_engine"))
