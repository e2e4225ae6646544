-- Run once by the postgres image on an empty data volume: the export's state database lives
-- next to Dagster's own (POSTGRES_DB), on the same server.
CREATE DATABASE export_state;
