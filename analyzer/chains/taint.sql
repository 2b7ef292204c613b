-- id: taint
-- severity: high
-- summary: a value that came back from one tool was passed to another tool later in the session
--
-- Follows values by their keyed fingerprints (the gateway never records the values): a
-- fingerprint found in an answer of tool A, then found in the arguments of a call to tool B
-- (B ≠ A) later in the same session. One alert per session and value. Near misses: the same
-- tool again, or the value seen in the arguments before it came back.
WITH outs AS (
  SELECT event_id AS id, ts, session, tool, fingerprint, kind FROM findings
  WHERE direction = 'response' AND fingerprint IS NOT NULL
),
ins AS (
  SELECT event_id AS id, ts, session, tool, fingerprint, subject FROM findings
  WHERE direction = 'request' AND fingerprint IS NOT NULL
),
hits AS (
  SELECT i.session, i.subject, i.ts, make_array(o.id, i.id) AS evidence,
         row_number() OVER (PARTITION BY i.session, i.fingerprint ORDER BY i.ts, o.ts) AS n
  FROM outs o JOIN ins i
    ON i.session = o.session AND i.fingerprint = o.fingerprint AND i.ts > o.ts
   AND coalesce(i.tool, '') <> coalesce(o.tool, '')
)
SELECT session, subject, ts, evidence FROM hits WHERE n = 1
