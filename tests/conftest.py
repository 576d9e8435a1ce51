import pytest

import pvpatch


@pytest.fixture
def selftest_native():
    """Leave the selftest group native after the test, whatever it did."""
    yield
    pvpatch.runtime_patch({"selftest": "native"})
