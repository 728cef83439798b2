"""fetch-etl: SQS login events -> pseudonymised rows in PostgreSQL, as Dagster assets."""
