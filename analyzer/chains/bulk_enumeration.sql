-- id: bulk-enumeration
-- severity: medium
-- summary: many distinct records read in a short time (bulk enumeration)
--
-- Twenty or more calls in one minute to tools whose names read records (get, read, fetch,
-- lookup, query, search, list, describe, show), each with different arguments. Near misses:
-- the same call repeated, or the reads spread over more than a minute. One alert per session
-- (`incident`).
WITH reads AS (
  SELECT id, ts, session, identity['subject'] AS subject, payload FROM events
  WHERE kind = 'request' AND method = 'tools/call' AND tool ~* '(get|read|fetch|lookup|query|search|list|describe|show)'
),
windows AS (
  SELECT a.session, a.id AS first_id, a.ts AS t0, max(b.subject) AS subject, max(b.ts) AS ts,
         count(DISTINCT b.payload) AS distinct_calls, array_agg(b.id ORDER BY b.ts) AS evidence
  FROM reads a JOIN reads b ON b.session = a.session AND b.ts >= a.ts AND b.ts < a.ts + INTERVAL '1 minute'
  GROUP BY a.session, a.id, a.ts
),
hits AS (
  SELECT *, row_number() OVER (PARTITION BY session ORDER BY t0) AS n FROM windows WHERE distinct_calls >= 20
)
SELECT session, subject, ts, evidence, session AS incident FROM hits WHERE n = 1
