"""Every name the package promises in ``__all__`` resolves (the exports load lazily)."""

import autotimm_stream


def test_every_public_name_resolves():
    for name in autotimm_stream.__all__:
        assert getattr(autotimm_stream, name) is not None, name
