"""Cluster mode (design §16): tenants sharded across nodes by rendezvous hashing, one API in
front of them (any node proxies to the owner), and tenants handed to their new owner when the
number of nodes changes. Off while `cluster.nodes` is 1 and no `cluster.peer_url` is set; the
daemon attaches it to the app (wiring.py) only when it is on."""
