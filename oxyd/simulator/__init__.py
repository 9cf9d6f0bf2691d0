"""The simulated WhatsApp engine: demos, webhook consumers' tests, load tests, end-to-end tests."""
