-- Row-level security is PostgreSQL-only; on SQLite the application filter is the wall.
-- This migration exists so both backends carry the same versions.
SELECT 1;
