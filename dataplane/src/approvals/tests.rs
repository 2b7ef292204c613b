use super::*;
use std::os::unix::fs::PermissionsExt as _;

fn ask(s: &Store, subject: &str, digest: &str, timeout: Duration) -> Ask {
    s.ask(Request {
        subject,
        agent_groups: &["eng".to_string()],
        session: Some("sess"),
        route: "mcp",
        tool: "transfer_funds",
        method: "tools/call",
        arguments: serde_json::json!({"amount": 5000}),
        args_digest: digest.into(),
        approvers: &["finance".to_string()],
        rule: "wire-transfers",
        timeout,
    })
}

fn wait_id(a: Ask) -> (String, bool) {
    match a {
        Ask::Wait { entry, created } => (entry.id, created),
        other => panic!("{other:?}"),
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn an_approval_lets_exactly_that_call_through_once() {
    let s = Store::default();
    let (id, created) = wait_id(ask(&s, "agent", "d1", HOUR));
    assert!(created);
    // The same call asked again waits on the same record; other arguments open another one.
    assert_eq!(wait_id(ask(&s, "agent", "d1", HOUR)), (id.clone(), false));
    let (other, _) = wait_id(ask(&s, "agent", "d2", HOUR));
    assert_ne!(other, id);
    s.decide(&id, "carol", &["finance".into()], true, "ok").unwrap();
    // The waiting call sees the approval and uses it.
    assert_eq!(s.poll(&id), Some((State::Approved { by: "carol".into(), reason: "ok".into() }, false)));
    assert_eq!(s.poll(&id).unwrap().0, State::Used { by: "carol".into() });
    // Used: the same call again needs a new approval.
    let (again, created) = wait_id(ask(&s, "agent", "d1", HOUR));
    assert!(created && again != id);
}

#[test]
fn an_approval_given_while_no_one_waits_is_used_by_the_retry_and_only_by_it() {
    let s = Store::default();
    let (id, _) = wait_id(ask(&s, "agent", "d1", HOUR));
    s.decide(&id, "carol", &["finance".into()], true, "").unwrap();
    // Another caller with the same arguments does not get it.
    assert!(matches!(ask(&s, "mallory", "d1", HOUR), Ask::Wait { created: true, .. }));
    // Other arguments do not get it.
    assert!(matches!(ask(&s, "agent", "d9", HOUR), Ask::Wait { created: true, .. }));
    match ask(&s, "agent", "d1", HOUR) {
        Ask::Approved { id: got, by } => assert_eq!((got, by.as_str()), (id, "carol")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(ask(&s, "agent", "d1", HOUR), Ask::Wait { created: true, .. }));
}

#[test]
fn reviewers_must_be_approvers_and_never_the_caller() {
    let s = Store::default();
    let (id, _) = wait_id(ask(&s, "agent", "d1", HOUR));
    assert_eq!(s.decide(&id, "dave", &["eng".into()], true, "").unwrap_err(), DecideError::NotApprover("finance".into()));
    assert_eq!(s.decide(&id, "agent", &["finance".into()], true, "").unwrap_err(), DecideError::OwnCall);
    assert_eq!(s.decide("nope", "carol", &["finance".into()], true, "").unwrap_err(), DecideError::Unknown("nope".into()));
    s.decide(&id, "carol", &["finance".into()], false, "too much").unwrap();
    assert_eq!(s.decide(&id, "erin", &["finance".into()], true, "").unwrap_err(), DecideError::Closed(id.clone(), "denied"));
    assert_eq!(s.poll(&id).unwrap().0, State::Denied { by: "carol".into(), reason: "too much".into() });
    // Reviewers only see what they may decide.
    assert!(s.list(&["eng".into()], true).is_empty());
    assert_eq!(s.list(&["finance".into()], true).len(), 1);
    assert!(s.list(&["finance".into()], false).is_empty(), "decided ones are listed only with all");
}

#[test]
fn undecided_requests_expire_once() {
    let s = Store::default();
    let (id, _) = wait_id(ask(&s, "agent", "d1", Duration::from_millis(20)));
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(s.poll(&id), Some((State::Expired, true)));
    assert_eq!(s.poll(&id), Some((State::Expired, false)));
    assert!(s.expire_due().is_empty(), "already marked by the waiting call");
    assert_eq!(s.decide(&id, "carol", &["finance".into()], true, "").unwrap_err(), DecideError::Closed(id.clone(), "expired"));
    let (id2, _) = wait_id(ask(&s, "agent", "d2", Duration::from_millis(10)));
    std::thread::sleep(Duration::from_millis(30));
    let gone = s.expire_due();
    assert_eq!(gone.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), [id2.as_str()]);
}

fn state_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("approvals.json");
    (d, p)
}

/// A store with one request pending (`d1`) and one approved by carol, not yet used (`d2`).
fn pending_and_approved() -> (Store, String, String) {
    let s = Store::default();
    let (pending, _) = wait_id(ask(&s, "agent", "d1", HOUR));
    let (approved, _) = wait_id(ask(&s, "agent", "d2", HOUR));
    s.decide(&approved, "carol", &["finance".into()], true, "ok").unwrap();
    (s, pending, approved)
}

#[test]
fn requests_and_decisions_survive_a_graceful_restart() {
    let (_d, path) = state_file();
    let (s, pending, approved) = pending_and_approved();
    let (used, _) = wait_id(ask(&s, "agent", "d3", HOUR));
    s.decide(&used, "carol", &["finance".into()], true, "ok").unwrap();
    assert!(matches!(ask(&s, "agent", "d3", HOUR), Ask::Approved { .. }));
    assert!(s.save(&path, true).unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "owner-only");
    // The write at stop is the last: housekeeping's next tick does not take back its `clean`,
    // and a decision after it is refused (the file would not hold it).
    let (d4, _) = wait_id(ask(&s, "agent", "d4", HOUR));
    assert!(!s.save(&path, false).unwrap());
    assert_eq!(s.decide(&d4, "carol", &["finance".into()], true, "").unwrap_err(), DecideError::Stopping);

    let (s, found) = Store::load(&path).unwrap();
    assert_eq!((found.pending, found.approved, found.withdrawn.len()), (1, 1, 0));
    // The same call asked again after the restart waits on the same record; the approval is
    // used by its call, once; the used one is not given again.
    assert_eq!(wait_id(ask(&s, "agent", "d1", HOUR)), (pending.clone(), false));
    assert!(matches!(ask(&s, "agent", "d2", HOUR), Ask::Approved { id, .. } if id == approved));
    assert!(matches!(ask(&s, "agent", "d2", HOUR), Ask::Wait { created: true, .. }));
    assert_ne!(wait_id(ask(&s, "agent", "d3", HOUR)).0, used);
    // A reviewer can still decide the carried-over request; the own-call rule still holds.
    assert_eq!(s.decide(&pending, "agent", &["finance".into()], true, "").unwrap_err(), DecideError::OwnCall);
    s.decide(&pending, "carol", &["finance".into()], false, "no").unwrap();
}

#[test]
fn a_crash_withdraws_approvals_not_yet_used_and_keeps_requests() {
    let (_d, path) = state_file();
    let (s, pending, approved) = pending_and_approved();
    // The housekeeping thread's write while running: not clean.
    assert!(s.save(&path, false).unwrap());
    assert!(!s.save(&path, false).unwrap(), "nothing changed, nothing written");
    let (s, found) = Store::load(&path).unwrap();
    assert_eq!((found.pending, found.approved), (1, 0));
    assert_eq!(found.withdrawn.iter().map(|e| (e.id.as_str(), e.state.name())).collect::<Vec<_>>(), vec![(approved.as_str(), "expired")], "withdrawn, for the record");
    assert!(matches!(ask(&s, "agent", "d2", HOUR), Ask::Wait { created: true, .. }), "the call must be approved again");
    assert_eq!(s.decide(&approved, "carol", &["finance".into()], true, "").unwrap_err(), DecideError::Closed(approved.clone(), "expired"));
    assert_eq!(wait_id(ask(&s, "agent", "d1", HOUR)), (pending, false));
}

#[test]
fn a_request_whose_time_ran_out_while_the_gateway_was_down_expires_at_once() {
    let (_d, path) = state_file();
    let s = Store::default();
    let (short, _) = wait_id(ask(&s, "agent", "d1", Duration::from_millis(300)));
    let (long, _) = wait_id(ask(&s, "agent", "d2", HOUR));
    s.save(&path, true).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let (s, _) = Store::load(&path).unwrap();
    let expired: Vec<String> = s.expire_due().into_iter().map(|e| e.id).collect();
    assert_eq!(expired, vec![short]);
    let waited = s.list(&["finance".into()], false);
    assert_eq!(waited.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), vec![long.as_str()]);
    assert!(waited[0].waited() >= Duration::from_millis(400), "the wait counts from the request, not the restart");
}

#[test]
fn a_state_file_that_is_not_one_stops_the_start_with_what_to_do() {
    let (_d, path) = state_file();
    let (s, found) = Store::load(&path).unwrap();
    assert_eq!((s.list(&["finance".into()], true).len(), found.pending, found.approved, found.withdrawn.len()), (0, 0, 0, 0), "no file: nothing carried over");
    std::fs::write(&path, b"{\"version\": 1, \"clean\": true, \"entries\": [{\"id\": 3}]}").unwrap();
    let e = Store::load(&path).unwrap_err().to_string();
    assert!(e.contains("approvals.state_file") && e.contains("move it aside"), "{e}");
    std::fs::write(&path, b"{\"version\": 9, \"clean\": true, \"entries\": []}").unwrap();
    assert!(Store::load(&path).unwrap_err().to_string().contains("version 9"));
}
