-- LLM calls whose model has no price (AGENTPLANE_LLM_PRICES): their cost is unknown, so the
-- step's and the execution's cost read as null instead of a made-up $0.
ALTER TABLE executions ADD COLUMN unpriced_calls BIGINT NOT NULL DEFAULT 0;
ALTER TABLE execution_steps ADD COLUMN unpriced_calls BIGINT NOT NULL DEFAULT 0;
