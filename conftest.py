"""A skipped test is a failed test: the suite (tests, and the doctests of ``bertcore/`` and
``boards/``) allows no skip, so that a missing tool or a doctest whose examples are all
``+SKIP`` cannot pass unnoticed. (Slow tests are deselected by ``-m 'not slow'``, not skipped.)
"""

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, and this suite allows no skip: {reason}"
