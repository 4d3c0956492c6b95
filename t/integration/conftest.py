"""Root conftest of the integration tests: puts tnhelp on sys.path, skips
everything when $TERND_BUILD is not set, bounds every test in time and
kills any ternd a test left running.

Subdirectories (broker/, pool/, ...) may have their own conftest.py; they
import the helper with `import tnhelp` and get the `ternd` fixture from
here. pytest.ini selects --import-mode=importlib so test files with the
same name in different subdirectories do not clash."""

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tnhelp  # noqa: E402

TEST_TIMEOUT = int(os.environ.get("TERND_TEST_TIMEOUT", "120"))


def pytest_collection_modifyitems(config, items):
    if tnhelp.BUILD is None:
        skip = pytest.mark.skip(reason="set TERND_BUILD to the build directory")
        for item in items:
            item.add_marker(skip)
    elif not tnhelp.ternd_bin().exists():
        raise pytest.UsageError("no ternd binary at %s: build first" % tnhelp.ternd_bin())


@pytest.fixture(autouse=True)
def _time_limit():
    """Fail (rather than hang) a test that runs longer than TEST_TIMEOUT."""
    def expired(signum, frame):
        raise TimeoutError("test ran longer than %ds" % TEST_TIMEOUT)
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_TIMEOUT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def ternd(tmp_path):
    """A factory: ternd(daemon={...}, sections={...}, text="...", env={...})
    returns a configured, not yet started tnhelp.Ternd; each call gets its
    own directory. Every process is killed at the end of the test."""
    made = []

    def make(**kw):
        t = tnhelp.Ternd(tmp_path / ("t%d" % len(made)), **kw)
        made.append(t)
        return t
    yield make
    for t in made:
        t.kill()


@pytest.fixture
def sample_modules():
    """The test modules built by `make check`; skip when they are missing."""
    d = tnhelp.test_modules_dir()
    for name in ("sample.so", "sampledep.so", "badabi.so"):
        if not (d / name).exists():
            pytest.skip("%s missing: run `make check` in %s first" % (name, tnhelp.BUILD))
    return d
