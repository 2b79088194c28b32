-- PostgreSQL leaves free space on the pages of executions and execution_steps for their
-- updates (fillfactor). SQLite rewrites a row in place: nothing to change.
SELECT 1;
