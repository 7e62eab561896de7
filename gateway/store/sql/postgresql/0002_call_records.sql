-- Call records for every call, inbound and outbound. Plain columns copy what listing filters, sorts and prunes on
-- (the record's scalar fields stay in data, as before); the structured parts get JSONB columns of their own. Every
-- new column is nullable: a gateway of the previous version, still running during a rolling deploy, goes on
-- inserting (call_sid, data, status, updated_at) rows.
ALTER TABLE calls ADD COLUMN stream_sid TEXT, ADD COLUMN direction TEXT, ADD COLUMN from_number TEXT,
                  ADD COLUMN to_number TEXT, ADD COLUMN api_key_id TEXT, ADD COLUMN outcome TEXT,
                  ADD COLUMN ended_by TEXT, ADD COLUMN created_at DOUBLE PRECISION,
                  ADD COLUMN started_at DOUBLE PRECISION, ADD COLUMN ended_at DOUBLE PRECISION,
                  ADD COLUMN cost_usd DOUBLE PRECISION, ADD COLUMN recording TEXT, ADD COLUMN turns JSONB,
                  ADD COLUMN tool_calls JSONB, ADD COLUMN reconnects JSONB, ADD COLUMN rollovers JSONB,
                  ADD COLUMN usage JSONB;
-- The rows already there (outbound calls, from POST /calls and Twilio's callbacks) get their columns from data.
UPDATE calls SET direction = data->>'direction', from_number = data->>'from_', to_number = data->>'to',
                 api_key_id = data->>'api_key_id',
                 created_at = COALESCE((data->>'created_at')::double precision, updated_at);
CREATE INDEX calls_created ON calls (created_at, call_sid);
CREATE INDEX calls_key_created ON calls (api_key_id, created_at, call_sid);
CREATE INDEX calls_from_number ON calls (from_number);
CREATE INDEX calls_to_number ON calls (to_number);
