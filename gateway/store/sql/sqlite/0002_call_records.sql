-- Call records for every call, inbound and outbound. Plain columns copy what listing filters, sorts and prunes on
-- (the record's scalar fields stay in data, as before); the structured parts get JSON columns of their own (TEXT
-- holding JSON). Every new column is nullable: a gateway of the previous version, still running during a rolling
-- deploy, goes on inserting (call_sid, data, status, updated_at) rows.
ALTER TABLE calls ADD COLUMN stream_sid TEXT;
ALTER TABLE calls ADD COLUMN direction TEXT;
ALTER TABLE calls ADD COLUMN from_number TEXT;
ALTER TABLE calls ADD COLUMN to_number TEXT;
ALTER TABLE calls ADD COLUMN api_key_id TEXT;
ALTER TABLE calls ADD COLUMN outcome TEXT;
ALTER TABLE calls ADD COLUMN ended_by TEXT;
ALTER TABLE calls ADD COLUMN created_at REAL;
ALTER TABLE calls ADD COLUMN started_at REAL;
ALTER TABLE calls ADD COLUMN ended_at REAL;
ALTER TABLE calls ADD COLUMN cost_usd REAL;
ALTER TABLE calls ADD COLUMN recording TEXT;
ALTER TABLE calls ADD COLUMN turns TEXT;
ALTER TABLE calls ADD COLUMN tool_calls TEXT;
ALTER TABLE calls ADD COLUMN reconnects TEXT;
ALTER TABLE calls ADD COLUMN rollovers TEXT;
ALTER TABLE calls ADD COLUMN usage TEXT;
-- The rows already there (outbound calls, from POST /calls and Twilio's callbacks) get their columns from data.
UPDATE calls SET direction = json_extract(data, '$.direction'), from_number = json_extract(data, '$.from_'),
                 to_number = json_extract(data, '$.to'), api_key_id = json_extract(data, '$.api_key_id'),
                 created_at = COALESCE(json_extract(data, '$.created_at'), updated_at);
CREATE INDEX calls_created ON calls (created_at, call_sid);
CREATE INDEX calls_key_created ON calls (api_key_id, created_at, call_sid);
CREATE INDEX calls_from_number ON calls (from_number);
CREATE INDEX calls_to_number ON calls (to_number);
