-- A record is written when a call's stream starts, naming the instance that holds the call (holder), and completed
-- at its end. A record still open (a holder, no end) whose holder is gone is marked lost by the sweeper
-- (gateway.store.records): the partial index keeps its query to the few open records. Nullable: rows of earlier
-- versions, and of a gateway of the previous version during a rolling deploy, have no holder and are never open.
ALTER TABLE calls ADD COLUMN holder TEXT;
CREATE INDEX calls_open ON calls (created_at, call_sid) WHERE holder IS NOT NULL AND ended_at IS NULL
    AND outcome IS NULL;
