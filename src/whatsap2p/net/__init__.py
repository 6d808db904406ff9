"""asyncio adapters: move bytes between streams and the sans-IO protocol objects."""
