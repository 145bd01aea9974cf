"""``python -m pgvault`` runs the command-line interface (through :mod:`pgvault.entry`: ``wal push``'s fast path)."""

from pgvault.entry import main

raise SystemExit(main())
