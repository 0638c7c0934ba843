"""Segmentation Suite: train segmentation models together over a relay.

`segmentation_suite.network` holds the client side: the weight codec, the transport and the
session logic. The C extension `segmentation_suite.network._relayclient` does the heavy work.
"""

__version__ = "0.1.0"
