"""Keeping tenants connected: the Supervisor (supervisor.py, with its state records,
operator commands and health sweep) owns one Runner per tenant (runner.py: one tenant's
life, with its inbox and the outcomes that end a session). A runner sees its owner only
through host.py's Protocol; errors.py is what a command that cannot be done raises."""
