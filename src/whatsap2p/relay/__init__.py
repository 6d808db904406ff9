"""The relay: a process of its own that joins two modules' connections when no direct
path exists, and forwards their bytes (sealed by their own Noise session) both ways."""
