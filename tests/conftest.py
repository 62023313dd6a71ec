"""Test-suite settings. Under CI (the CI environment variable set, as `.ci/run` runs) hypothesis is derandomised, so
that a submission's result does not depend on the examples one run happens to draw; locally it explores randomly
and remembers failures in .hypothesis/."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
