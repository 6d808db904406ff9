"""The central directory: who is online, and where. It never sees message content."""
