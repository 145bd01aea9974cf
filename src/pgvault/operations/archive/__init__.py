"""The WAL archive: ``push_fetch`` is what ``archive_command`` and ``restore_command`` run (one
segment each, with the exit codes PostgreSQL acts upon, and waiting until segments are archived);
``background`` holds the async pusher (uploads the ``.ready`` backlog in parallel) and the
prefetcher (fetches the next segments ahead of recovery)."""
