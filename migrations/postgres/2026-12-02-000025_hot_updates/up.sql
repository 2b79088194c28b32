-- Room on each page for the new versions of the rows the engine updates (#15). An
-- execution's row is updated by its claim and by its driver's last transaction, and a
-- step's row when the step ends. Inserted back to back, their pages were full, so every
-- update put the new version on another page and added an entry to each of the table's
-- indexes (executions has nine). With free space on the page, an update that changes no
-- indexed column (the claim's lease, a step's result) stays on the page (a HOT update:
-- no index entries), and the space is reused once the old versions are pruned.
-- Applies to pages written from now on; `VACUUM FULL` rewrites the old ones.
ALTER TABLE executions SET (fillfactor = 70);
ALTER TABLE execution_steps SET (fillfactor = 70);
