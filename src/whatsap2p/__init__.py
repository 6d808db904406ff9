"""WhatsAp2p: a peer-to-peer messenger for text and photos with a small directory server."""

__all__ = ["__version__"]

__version__ = "0.1.0"
