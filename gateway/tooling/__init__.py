"""The tooling: what drives, measures and attacks the gateway from outside, apart from the product.

* :mod:`.replay`: the call-replay harness (a Twilio-faithful phone, scenarios, recorded calls, the pytest helper);
* :mod:`.bench`: ``gateway bench``; :mod:`.fuzz`: ``gateway fuzz``; :mod:`.soak`: ``gateway soak``;
* :mod:`.demo`: ``gateway demo``; :mod:`.command`: the exit status of a command that measures or attacks.

The tooling may import the product; no product module imports the tooling, except the entry point
(``gateway.cli``), lazily, inside its command functions (``tests/test_layers.py`` enforces it; the layer map is in
docs/ARCHITECTURE.md).
"""
