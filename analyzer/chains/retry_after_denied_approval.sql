-- id: retry-after-denied-approval
-- severity: high
-- summary: a call a reviewer denied was asked for again with the same arguments
--
-- An `approval_decided` event with state denied, then a new approval request by the same
-- caller for the same tool and the same argument digest. Near miss: the retry changed the
-- arguments (a new digest), or it came before the denial.
WITH denied AS (
  SELECT event_id AS id, ts, subject, tool, args_digest FROM approvals WHERE step = 'approval_decided' AND state = 'denied'
),
asked AS (
  SELECT event_id AS id, ts, session, subject, tool, args_digest FROM approvals WHERE step = 'approval_requested'
),
hits AS (
  SELECT a.session, a.subject, a.ts, make_array(d.id, a.id) AS evidence,
         row_number() OVER (PARTITION BY d.id ORDER BY a.ts) AS n
  FROM denied d JOIN asked a ON a.subject = d.subject AND a.tool = d.tool AND a.args_digest = d.args_digest AND a.ts > d.ts
)
SELECT session, subject, ts, evidence FROM hits WHERE n = 1
