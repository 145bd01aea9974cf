"""``python -m pgvault`` runs the command-line interface."""

from pgvault.cli import main

raise SystemExit(main())
