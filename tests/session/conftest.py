"""Session fixtures.

``tracker_impl``   which statement tracker ``track.StatementTracker`` (and
                   ``track.Statement``) is for the module's tests: "python"
                   (the reference, ``StatementTrackerPy``) or "c" (the
                   compiled ``proxy.session._track``, whenever it was built,
                   even if it failed track.py's import-time self-test: the
                   tests should say why).  Modules use it for every test
                   (``pytestmark = pytest.mark.usefixtures("tracker_impl")``)
                   and look the class up at call time, as client_conn does.
"""

from __future__ import annotations

import pytest

from proxy.session import track

C_TRACKER = track._track.StatementTracker if track._track is not None else None
C_STATEMENT = track._track.Statement if track._track is not None else None

needs_c = pytest.mark.skipif(C_TRACKER is None, reason="proxy.session._track not built")

TRACKER_IMPLS = [
    pytest.param("python", id="python"),
    pytest.param("c", id="c", marks=needs_c),
]

CLASSES = {"python": (track.StatementTrackerPy, track.StatementPy), "c": (C_TRACKER, C_STATEMENT)}


@pytest.fixture(scope="module", params=TRACKER_IMPLS)
def tracker_impl(request):
    """Run the module's tests with each tracker (module scope: hypothesis-friendly)."""
    saved = track.StatementTracker, track.Statement, track.TRACKER_IMPL
    track.StatementTracker, track.Statement = CLASSES[request.param]
    track.TRACKER_IMPL = request.param
    yield request.param
    track.StatementTracker, track.Statement, track.TRACKER_IMPL = saved
