import pytest
from loguru import logger


@pytest.fixture(autouse=True)
def _quiet_loguru():
    """Tests run with loguru's default stderr sink removed; failures still show captured logs."""
    logger.remove()
    handler = logger.add(lambda m: print(m, end=""), level="DEBUG")
    yield
    logger.remove(handler)
