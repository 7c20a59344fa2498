-- Servers about to be started. A launch is recorded before the spawn and forgotten in the
-- transaction that records the started server in `servers`, so a crash between the spawn
-- and that record still leaves a trace: the server's environment carries
-- EVALCTL_LAUNCH_TOKEN=<token>, and the next life of the agent ends the processes that
-- carry it.
CREATE TABLE launches (
    token    TEXT PRIMARY KEY,
    unit_id  TEXT NOT NULL,
    command  TEXT NOT NULL,
    log_path BLOB NOT NULL
) STRICT;
