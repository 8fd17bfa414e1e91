"""The transports: one module per kind of destination, each implementing `base.Transport`."""
