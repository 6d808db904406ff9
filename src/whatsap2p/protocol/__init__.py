"""Sans-IO core: frames, messages and connection state machines (bytes in, events out)."""
