-- Deleting a tenant (`deleteTenant`): the PostgreSQL side adds the guarded function that
-- purges a suspended tenant's audit chain; SQLite has no roles to guard against, so the
-- service deletes the records itself. Nothing changes in this schema.
SELECT 1;
