import os

from hypothesis import HealthCheck, settings

# the suite runs on 2 cores in CI; hypothesis examples are kept few and deadline-free because the
# first call of a specialization compiles it
settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
