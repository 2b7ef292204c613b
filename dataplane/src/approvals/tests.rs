use super::*;

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
