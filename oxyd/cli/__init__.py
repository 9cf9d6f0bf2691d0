"""The `oxyd` command: main (argv, run, check-config) and client (commands for a running daemon)."""
