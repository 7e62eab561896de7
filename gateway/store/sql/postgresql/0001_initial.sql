-- The schema the store created before it had migrations, exactly: a database made then is recognised as version 1
-- (the tables exist, schema_version does not) and upgraded in place from here.
CREATE TABLE IF NOT EXISTS call_settings (key TEXT PRIMARY KEY, data JSONB NOT NULL,
                                          expires_at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS call_settings_expiry ON call_settings (expires_at);
CREATE TABLE IF NOT EXISTS calls (call_sid TEXT PRIMARY KEY, data JSONB NOT NULL, status TEXT NOT NULL,
                                  updated_at DOUBLE PRECISION NOT NULL);
