"""Incoming media: the download service, the content-addressed files, retention."""
