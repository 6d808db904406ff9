"""`python -m whatsap2p` is the same program as the `whatsap2p` command."""

from whatsap2p.ui.cli import main

raise SystemExit(main())
