"""The Custom Webhook log stream body: framing, event shapes and log ids. Pure; no I/O.

Auth0 labels JSON Lines `application/json` too, so the framing is read from the body itself:
a whole JSON array or object, else one JSON document per line.
"""
