"""The ways people and programs drive a Session: the CLI, JSON-RPC, plain lines."""
