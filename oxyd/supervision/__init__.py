"""Keeping tenants connected: the Supervisor (supervisor.py, with its state records,
operator commands and health sweep) owns one Runner per tenant (runner.py: one tenant's
life). errors.py is what a command that cannot be done raises."""
