import pytest
from helpers import oxyd_daemon
from loguru import logger


@pytest.fixture(autouse=True)
def _quiet_loguru():
    """Tests run with loguru's default stderr sink removed; failures still show captured logs."""
    logger.remove()
    handler = logger.add(lambda m: print(m, end=""), level="DEBUG")
    yield
    logger.remove(handler)


def pytest_addoption(parser):
    parser.addoption(
        "--long",
        action="store_true",
        help="run the full versions of tests/reliability (same as OXYD_LONG=1)",
    )


def pytest_configure(config):
    # Before collection, so tests/reliability sees it when its modules are imported.
    if config.getoption("--long"):
        import os

        os.environ["OXYD_LONG"] = "1"


@pytest.fixture
def daemon(tmp_path):
    """A real `oxyd run` process (tests/helpers.py oxyd_daemon): {"url", "env", "data", "token"}."""
    with oxyd_daemon(tmp_path) as running:
        yield running
