-- The retention checkpoint (where a pruned chain starts) is signed with the audit chain
-- key when a master key is configured, so moving it needs the key.
ALTER TABLE audit_heads ADD COLUMN checkpoint_sig TEXT;
