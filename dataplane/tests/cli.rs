//! The `sluice` binary's command line: `check` reports every problem at once with the file and
//! the path inside it, and a worker that cannot start makes `run` fail loudly (never exit 0).

use std::os::unix::process::CommandExt;
use std::process::Command;

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

#[test]
fn check_accepts_the_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/sluice.toml");
    // The example reads the Kafka SASL password from the environment, as in production.
    let out = sluice().args(["check", "--config", example]).env("SLUICE_KAFKA_PASSWORD", "example").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 listener(s), 2 upstream(s), 2 route(s)"));
    let out = sluice().args(["check", "--config", example]).env_remove("SLUICE_KAFKA_PASSWORD").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("recording.kafka.options_from_env.\"sasl.password\": environment variable SLUICE_KAFKA_PASSWORD is not set"), "{err}");
}

#[test]
fn check_reports_every_problem_with_file_and_path() {
    let tmp = tempfile::Builder::new().prefix("sluice-cli-").tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let file = dir.join("broken.toml");
    std::fs::write(
        &file,
        "[gateway]\nallowed_origins = [\"https://chat.example.com\", \"chat.example.com/app\"]\nallowed_hosts = [\"gw.example\", \"https://gw.example\"]\n[timeouts]\nstream_idle = \"forever\"\n[[listener]]\naddress = \"127.0.0.1:99999\"\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n[[route]]\npath = \"/mcp\"\nhost = \"tools.example:8080\"\nupstream = \"b\"\n",
    )
    .unwrap();
    let out = sluice().args(["check", "--config", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("6 problem(s)"), "{err}");
    for path in ["gateway.allowed_origins[1]", "gateway.allowed_hosts[1]", "timeouts.stream_idle", "listener[0].address", "route[0].host", "route[0].upstream"] {
        assert!(err.contains(&format!("{}: {path}:", file.display())), "{path} missing in:\n{err}");
    }
    assert!(err.contains("no upstream is named \"b\""), "{err}");
}

#[test]
fn run_fails_loudly_when_workers_cannot_start() {
    // glommio needs 512 KiB of locked memory per executor; below that the executors cannot
    // start, and sluice must say so and exit non-zero instead of exiting 0 silently.
    // Its own spool: quick mode's default is the host's /var/lib/sluice/spool.
    let spool = tempfile::Builder::new().prefix("sluice-memlock-").tempdir().unwrap();
    let mut cmd = sluice();
    cmd.args(["run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--upstream", "http://127.0.0.1:1/mcp", "--workers", "2", "--spool"]);
    cmd.arg(spool.path());
    // SAFETY: setrlimit is async-signal-safe and only affects the child about to exec.
    unsafe {
        cmd.pre_exec(|| {
            let r = libc::rlimit { rlim_cur: 128 * 1024, rlim_max: 128 * 1024 };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LimitMEMLOCK"), "{err}");
    assert!(err.contains("worker 0") && err.contains("worker 1"), "{err}");
}

#[test]
fn run_without_config_or_upstream_explains_itself() {
    let out = sluice().arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream URL for quick mode"));
}

fn scan(args: &[&str], stdin: &str) -> (i32, String) {
    use std::io::Write;
    let mut child = sluice()
        .arg("scan")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn scan_reports_byte_offsets_and_exit_codes() {
    let text = "héllo ada@example.com, SSN 536-22-1029";
    let (code, out) = scan(&["--format", "jsonl", "--input", "text"], text);
    assert_eq!(code, 1);
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let email = rows.iter().find(|r| r["kind"] == "email").expect("email found");
    let (s, e) = (email["start"].as_u64().unwrap() as usize, email["end"].as_u64().unwrap() as usize);
    assert_eq!(&text[s..e], "ada@example.com", "UTF-8 byte offsets, half-open");
    assert!(rows.iter().any(|r| r["kind"] == "us_ssn" && r["category"] == "pii"));
    assert_eq!(scan(&["--input", "text"], "the weather is fine").0, 0);
}

#[test]
fn scan_masks_json_and_jsonl_keeping_them_valid() {
    let doc = r#"{"result":{"content":[{"type":"text","text":"token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 and \"quotes\""}]}}"#;
    let (code, out) = scan(&["--mask"], doc);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("masked output is JSON");
    assert_eq!(v["result"]["content"][0]["text"], "token [REDACTED:github_classic_token] and \"quotes\"");
    let (_, out) = scan(&["--format", "jsonl"], doc);
    assert!(out.contains("\"path\":\"/result/content/0/text\""), "{out}");
    let lines = "{\"id\":\"a\",\"text\":\"mail bob@example.com\"}\n{\"id\":\"b\",\"text\":\"clean\"}\n";
    let (code, out) = scan(&["--format", "jsonl"], lines);
    assert_eq!(code, 1);
    assert!(out.contains("\"id\":\"a\"") && !out.contains("\"id\":\"b\""));
}

fn policy_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policy")
}

#[test]
fn policy_cases_shipped_with_the_example_pass_and_a_wrong_expectation_fails() {
    let cases = policy_dir().join("policy.cases.toml");
    let out = sluice().args(["policy", "test", cases.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("0 failed"), "{stdout}");
    // The same cases with one expectation turned around must fail, naming the case.
    let tmp = tempfile::Builder::new().prefix("sluice-policy-").tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::copy(policy_dir().join("policy.toml"), dir.join("policy.toml")).unwrap();
    let text = std::fs::read_to_string(&cases).unwrap().replacen(
        "expect = [\"allow by engineers\", \"deny by destructive-needs-ops\"",
        "expect = [\"allow by engineers\", \"allow by engineers\"",
        1,
    );
    std::fs::write(dir.join("wrong.cases.toml"), text).unwrap();
    let out = sluice().args(["policy", "test", dir.join("wrong.cases.toml").to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL") && stdout.contains("a batch cannot smuggle a denied call") && stdout.contains("1 failed"), "{stdout}");
}

#[test]
fn policy_explain_names_the_deciding_rule_and_every_rule_tried() {
    let policy = policy_dir().join("policy.toml");
    let explain = |extra: &[&str]| {
        let mut args = vec!["policy", "explain", "--json", "--policy", policy.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = sluice().args(&args).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), v)
    };
    let (code, v) = explain(&[
        "--identity",
        "alice",
        "--groups",
        "eng",
        "--tool",
        "search",
        "--args",
        r#"{"q":"x"}"#,
        "--annotations",
        r#"{"readOnlyHint":true,"openWorldHint":false}"#,
    ]);
    assert_eq!((code, v["decision"].as_str(), v["rule"].as_str()), (Some(0), Some("allow"), Some("engineers")), "{v:#}");
    let steps: Vec<&str> = v["steps"].as_array().unwrap().iter().map(|s| s["rule"].as_str().unwrap()).collect();
    assert_eq!(steps.first(), Some(&"protocol"));
    assert_eq!(steps.last(), Some(&"engineers"));
    // A secret in the arguments is found by detection and decides.
    let (code, v) = explain(&["--identity", "alice", "--groups", "eng", "--tool", "search", "--args", r#"{"q":"AKIAQYLPMN5HFIQR7XYZ"}"#]);
    assert_eq!((code, v["rule"].as_str()), (Some(1), Some("no-secrets-in-arguments")), "{v:#}");
    assert_eq!(v["findings"][0]["kind"], "aws_access_key_id");
    assert!(v["reason"].as_str().unwrap().contains("credential"));
    // A server's request, by the `from = "server"` rules only: sampling from a third party
    // is denied, from the in-house server nothing decides and it passes; URL elicitation off-site denied.
    let sampling = r#"{"messages":[{"role":"user","content":{"type":"text","text":"hi"}}],"maxTokens":9}"#;
    let (code, v) = explain(&["--from-server", "--method", "sampling/createMessage", "--upstream", "partner", "--args", sampling]);
    assert_eq!((code, v["decision"].as_str(), v["rule"].as_str()), (Some(1), Some("deny"), Some("no-sampling-from-third-parties")), "{v:#}");
    let tried: Vec<&str> = v["steps"].as_array().unwrap().iter().map(|s| s["rule"].as_str().unwrap()).collect();
    assert_eq!(tried, ["no-sampling-from-third-parties"], "only server rules are tried");
    let (code, v) = explain(&["--from-server", "--method", "sampling/createMessage", "--upstream", "everything", "--args", sampling]);
    assert_eq!((code, v["decision"].as_str(), v["rule"].as_str()), (Some(0), Some("allow"), None), "{v:#}");
    let (code, v) = explain(&["--from-server", "--method", "elicitation/create", "--args", r#"{"mode":"url","url":"https://evil.example/login","message":"m","elicitationId":"e"}"#]);
    assert_eq!((code, v["rule"].as_str()), (Some(1), Some("elicitation-urls")), "{v:#}");
    // A group without rights.
    let (code, v) = explain(&["--identity", r#"{"sub":"bob","groups":["marketing"]}"#, "--tool", "search", "--annotations", r#"{"readOnlyHint":true}"#]);
    assert_eq!((code, v["decision"].as_str(), v["rule"].as_str()), (Some(1), Some("deny"), None), "{v:#}");
    assert!(v["reason"].as_str().unwrap().contains("`bob`"), "{v:#}");
}

#[test]
fn policy_check_lists_rules_and_reports_every_problem() {
    let out = sluice().args(["policy", "check", policy_dir().join("policy.toml").to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("12 rule(s), default deny") && stdout.contains("keys-never-leave") && stdout.contains("response") && stdout.contains("elicitation-urls") && stdout.contains(" server "), "{stdout}");
    let tmp = tempfile::Builder::new().prefix("sluice-policy-bad-").tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[rule]]\nid = \"x\"\nwhen = 'tool.name =='\naction = \"allow\"\n[[rule]]\nid = \"y\"\naction = \"nope\"\n").unwrap();
    let out = sluice().args(["policy", "check", bad.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("2 problem(s)") && err.contains("rule[0] (\"x\").when") && err.contains("rule[1] (\"y\").action"), "{err}");
    // `sluice check` of a config naming this policy reports it under policy.file.
    let cfg = dir.join("sluice.toml");
    std::fs::write(&cfg, "[[listener]]\naddress = \"127.0.0.1:8080\"\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n[[route]]\npath = \"/mcp\"\nupstream = \"a\"\n[policy]\nfile = \"bad.toml\"\n").unwrap();
    let out = sluice().args(["check", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains(&format!("policy.file → {}: rule[1] (\"y\").action", bad.display())), "{err}");
}

#[test]
fn check_says_what_a_broker_would_refuse_and_that_the_access_log_is_on() {
    let tmp = tempfile::Builder::new().prefix("sluice-cli-").tempdir().unwrap();
    let file = tmp.path().join("big.toml");
    let spool = tmp.path().join("spool");
    let base = "[[listener]]\naddress = \"127.0.0.1:8080\"\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n[[route]]\npath = \"/mcp\"\nupstream = \"a\"\n";
    let text = format!("[gateway]\naccess_log = true\n{base}[recording]\nmax_payload_bytes = 4194304\n[recording.spool]\ndir = {spool:?}\n[recording.kafka]\nbrokers = \"127.0.0.1:9092\"\n");
    std::fs::write(&file, text).unwrap();
    let out = sluice().args(["check", "--config", file.to_str().unwrap()]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("max_payload_bytes = 4194304 is above the 1 MiB a Kafka broker takes"), "{said}");
    assert!(said.contains("access log: on"), "{said}");
    // More than an event carries: refused, with the path.
    std::fs::write(&file, format!("{base}[recording]\nmax_payload_bytes = 67108864\n[recording.spool]\ndir = {spool:?}\n")).unwrap();
    let out = sluice().args(["check", "--config", file.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(2) && err.contains("recording.max_payload_bytes: 67108864 is more than an event can carry"), "{err}");
    // Within the broker's size, or without Kafka: nothing to say.
    std::fs::write(&file, format!("{base}[recording]\nmax_payload_bytes = 4194304\n[recording.spool]\ndir = {spool:?}\n")).unwrap();
    let out = sluice().args(["check", "--config", file.to_str().unwrap()]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !said.contains("Kafka broker") && !said.contains("access log"), "{said}");
}
