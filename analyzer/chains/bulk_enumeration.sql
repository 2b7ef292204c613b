-- id: bulk-enumeration
-- severity: medium
-- summary: many distinct records read in a short time (bulk enumeration)
--
-- Twenty or more different records read within one minute in a session: calls to tools whose
-- names read records (get, read, fetch, lookup, query, search, list, describe, show), each
-- with arguments the session had not used before. Near misses: the same call repeated, or
-- the reads spread over more than a minute. One alert per session (`incident`); the evidence
-- is the first such minute's first reads.
--
-- Linear in the reads: a burst starts at a first read whose 19th successor (by time) is less
-- than a minute later (`lead`, not a window count or a self-join); only sessions with a burst
-- are read a second time, for the evidence.
WITH reads AS (
  SELECT id, ts, session, identity['subject'] AS subject, payload FROM events
  WHERE kind = 'request' AND method = 'tools/call' AND tool ~* '(get|read|fetch|lookup|query|search|list|describe|show)'
),
first_reads AS (
  SELECT session, min(ts) AS ts FROM reads GROUP BY session, payload
),
bursts AS (
  SELECT session, min(t0) AS t0 FROM (
    SELECT session, ts AS t0, lead(ts, 19) OVER (PARTITION BY session ORDER BY ts) AS t19 FROM first_reads
  ) WHERE t19 <= t0 + INTERVAL '59.999999 seconds'
  GROUP BY session
),
evidence AS (
  SELECT r.session, min(r.ts) AS ts, first_value(r.id ORDER BY r.ts) AS id, max(r.subject) AS subject
  FROM reads r JOIN bursts b ON b.session = r.session
  GROUP BY r.session, r.payload, b.t0
  HAVING min(r.ts) >= b.t0 AND min(r.ts) <= b.t0 + INTERVAL '59.999999 seconds'
)
SELECT session, max(subject) AS subject, max(ts) AS ts, array_agg(id ORDER BY ts) AS evidence, session AS incident
FROM evidence GROUP BY session
