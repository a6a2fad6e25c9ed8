import os

import pytest
from hypothesis import HealthCheck, settings

# the suite runs on 2 cores in CI; hypothesis examples are kept few and deadline-free because the
# first call of a specialization compiles it
settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(items):
    """Tests of one input format run on one worker (`--dist loadgroup`): the kernels are
    specialised per (rule family, input format, accumulator format), so the workers compile
    mostly disjoint sets and find the other's in the shared disk cache (numerics/cache.py makes
    concurrent writes safe); compilation is most of the suite's time on a cold cache."""
    for item in items:
        parameters = getattr(item, "callspec", None)
        if parameters is not None and "input_format" in parameters.params:
            item.add_marker(pytest.mark.xdist_group(parameters.params["input_format"]))
