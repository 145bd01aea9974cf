"""Everything that talks to PostgreSQL: connections, client programs, WAL math."""
