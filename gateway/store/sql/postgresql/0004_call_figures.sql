-- Figures of a call computed from its turns, in plain columns: the console sorts the listing on the call's turn
-- latency (the median, by nearest rank, of its turns' latencies) and its overview sums barge-ins, without reading
-- the turns' JSON of every row. Both are nullable: a gateway of the previous version leaves them NULL.
ALTER TABLE calls ADD COLUMN latency_ms DOUBLE PRECISION, ADD COLUMN barge_ins INTEGER;
-- The rows already there get them from their turns.
UPDATE calls SET
    barge_ins = (SELECT COUNT(*) FROM jsonb_array_elements(calls.turns) AS t(value)
                 WHERE t.value->>'barged_in' = 'true'),
    latency_ms = (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY (t.value->>'latency_ms')::double precision)
                  FROM jsonb_array_elements(calls.turns) AS t(value) WHERE t.value->>'latency_ms' IS NOT NULL)
WHERE jsonb_typeof(turns) = 'array';
