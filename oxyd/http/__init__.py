"""The control port: server (app factory, middlewares), routes, OpenAPI, metrics, status page."""
