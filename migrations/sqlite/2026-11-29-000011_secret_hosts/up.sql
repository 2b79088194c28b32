-- A secret may be pinned to the hosts it is sent to (JSON array of host names; NULL: any).
ALTER TABLE secrets ADD COLUMN allowed_hosts TEXT;
