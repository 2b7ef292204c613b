-- id: bulk-enumeration
-- severity: medium
-- summary: many distinct records read in a short time (bulk enumeration)
--
-- Twenty or more different records read within one minute in a session: calls to tools whose
-- names read records (get, read, fetch, lookup, query, search, list, describe, show), each
-- with arguments the session had not used before. Near misses: the same call repeated, or
-- the reads spread over more than a minute. One alert per session (`incident`).
--
-- A window over each session's first reads (not a self-join), so the cost grows with the
-- reads, not with their square.
WITH reads AS (
  SELECT id, ts, session, identity['subject'] AS subject, payload FROM events
  WHERE kind = 'request' AND method = 'tools/call' AND tool ~* '(get|read|fetch|lookup|query|search|list|describe|show)'
),
firsts AS (
  SELECT session, payload, min(ts) AS ts FROM reads GROUP BY session, payload
),
first_reads AS (
  SELECT r.id, r.ts, r.session, r.subject FROM reads r
  JOIN firsts f ON f.session = r.session AND f.payload = r.payload AND f.ts = r.ts
),
windows AS (
  SELECT session, ts AS t0,
         count(*) OVER w AS distinct_reads,
         max(ts) OVER w AS ts,
         max(subject) OVER w AS subject,
         array_agg(id) OVER w AS evidence
  FROM first_reads
  WINDOW w AS (PARTITION BY session ORDER BY ts RANGE BETWEEN CURRENT ROW AND INTERVAL '59.999999 seconds' FOLLOWING)
),
hits AS (
  SELECT *, row_number() OVER (PARTITION BY session ORDER BY t0) AS n FROM windows WHERE distinct_reads >= 20
)
SELECT session, subject, ts, evidence, session AS incident FROM hits WHERE n = 1
