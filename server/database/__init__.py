"""PostgreSQL: the batched reads, notifications, migrations, the embedded server."""
