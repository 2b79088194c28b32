-- PostgreSQL names its NOTIFY channels per schema. SQLite has no NOTIFY: nothing to change.
SELECT 1;
