-- Figures of a call computed from its turns, in plain columns: the console sorts the listing on the call's turn
-- latency (the median, by nearest rank, of its turns' latencies) and its overview sums barge-ins, without reading
-- the turns' JSON of every row. Both are nullable: a gateway of the previous version leaves them NULL.
ALTER TABLE calls ADD COLUMN latency_ms REAL;
ALTER TABLE calls ADD COLUMN barge_ins INTEGER;
-- The rows already there get them from their turns.
UPDATE calls SET
    barge_ins = (SELECT COUNT(*) FROM json_each(calls.turns) WHERE json_extract(value, '$.barged_in') = 1),
    latency_ms = (SELECT ms FROM (SELECT json_extract(value, '$.latency_ms') AS ms,
                                         ROW_NUMBER() OVER (ORDER BY json_extract(value, '$.latency_ms')) AS rn,
                                         COUNT(*) OVER () AS n
                                  FROM json_each(calls.turns) WHERE json_extract(value, '$.latency_ms') IS NOT NULL)
                  WHERE rn = (n + 1) / 2)
WHERE turns IS NOT NULL AND json_valid(turns);
