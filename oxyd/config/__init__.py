"""Configuration: built-in defaults, then a YAML file, then OXYD_<SECTION>_<KEY> variables.

Every error names its key path, so an operator can fix a file without reading code; the CLI
turns ConfigError into exit code 78 so systemd does not restart-loop on a bad file.

checks.py collects the errors, sections.py is the shape (one dataclass per section, with its
defaults and checks), loader.py reads the file and the environment into it.
"""

from oxyd.config.checks import ConfigError
from oxyd.config.loader import RESERVED_ENV, load
from oxyd.config.sections import (
    MEDIA_TYPES,
    SECRET_KEYS,
    WEBHOOK_EVENTS,
    BackupConfig,
    ClusterConfig,
    Config,
    HealthConfig,
    HttpConfig,
    LogConfig,
    LookupConfig,
    MediaConfig,
    NeonizeConfig,
    RetentionConfig,
    SendConfig,
    SimulatorConfig,
    StoreConfig,
    SupervisorConfig,
    WebhooksConfig,
)

EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h

__all__ = [
    "EXIT_CONFIG",
    "MEDIA_TYPES",
    "RESERVED_ENV",
    "SECRET_KEYS",
    "WEBHOOK_EVENTS",
    "BackupConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "HealthConfig",
    "HttpConfig",
    "LogConfig",
    "LookupConfig",
    "MediaConfig",
    "NeonizeConfig",
    "RetentionConfig",
    "SendConfig",
    "SimulatorConfig",
    "StoreConfig",
    "SupervisorConfig",
    "WebhooksConfig",
    "load",
]
