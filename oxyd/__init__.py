"""oxyd: many WhatsApp multi-device sessions, one small daemon."""

__version__ = "0.1.0"
