"""The one error of backups and restores."""


class BackupError(Exception):
    """A backup or restore that cannot proceed; the message is meant for the operator."""
