"""The neonize engine: the only package that imports neonize (whatsmeow through Go).

engine: the Engine behind the supervisor; client: one tenant's NewAClient and its gate;
events: neonize protobufs -> oxyd's model; pair: the short-lived pairing child process.
"""
