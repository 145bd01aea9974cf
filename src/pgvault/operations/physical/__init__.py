"""Physical backups and point-in-time recovery: ``basebackup`` (tar parts of a running cluster),
``restore_cluster`` (unpack a base backup and write the recovery settings), ``recovery`` (start the
server, follow its own log, confirm and compare where it stopped with the plan) and
``restore_point`` (named restore points, waited for in the archive)."""
