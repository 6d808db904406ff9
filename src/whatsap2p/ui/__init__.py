"""The ways people and programs drive a Session: the CLI, JSON-RPC, plain lines and the
terminal UI (these two read the same slash commands, `commands`)."""
