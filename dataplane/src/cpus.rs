//! Where the gateway's threads run. Workers take the CPUs the process may use (as started,
//! e.g. under `taskset -c 2-7` or a systemd `CPUAffinity=`), one each when pinned; with
//! `gateway.background_cpus` every other thread — the spool writer, the Kafka forwarder and
//! librdkafka's own threads, the log writer, housekeeping, the admin listener, identity and
//! token refreshes, approval webhooks — runs on those CPUs instead, and the workers on the
//! rest, so that recording and bookkeeping never take a slice of a core that serves requests.

use std::sync::OnceLock;

static ALLOWED: OnceLock<Vec<usize>> = OnceLock::new();

/// The CPUs this process may run on, read once before any thread is moved (later reads, on a
/// reload, would see the background threads' narrower set).
pub fn allowed() -> &'static [usize] {
    ALLOWED.get_or_init(|| {
        current().unwrap_or_else(|_| (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect())
    })
}

/// The calling thread's CPUs.
fn current() -> std::io::Result<Vec<usize>> {
    of_thread(0)
}

/// The CPUs thread `tid` of this process may run on (0: the calling thread).
fn of_thread(tid: libc::pid_t) -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: a thread of this process (or 0); the size is that of `set`.
    if unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: every index is below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

/// The workers' CPUs: those of `allowed` not in `background`. Every problem with `background`
/// is one message (the config names the key).
pub fn workers_cpus(allowed: &[usize], background: &[usize]) -> Result<Vec<usize>, String> {
    let mut problems = Vec::new();
    for (i, c) in background.iter().enumerate() {
        if background[..i].contains(c) {
            problems.push(format!("CPU {c} is listed twice"));
        } else if !allowed.contains(c) {
            problems.push(format!("CPU {c} is not one this process may run on ({})", ranges(allowed)));
        }
    }
    let rest: Vec<usize> = allowed.iter().copied().filter(|c| !background.contains(c)).collect();
    if rest.is_empty() && !background.is_empty() {
        problems.push(format!("no CPU is left for the workers ({} in all): leave at least one out", ranges(allowed)));
    }
    if problems.is_empty() {
        Ok(rest)
    } else {
        Err(problems.join("; "))
    }
}

/// `0-3,6` for a sorted list of CPU ids.
pub fn ranges(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j { cpus[i].to_string() } else { format!("{}-{}", cpus[i], cpus[j]) });
        i = j + 1;
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(",")
    }
}

/// Move every thread the process has now onto `cpus`; the threads they start later inherit
/// it. Called before the workers start (they are placed explicitly), so this reaches the main
/// thread, the log writer and whatever the config started (key fetchers). Returns how many
/// threads were moved.
pub fn move_all_threads(cpus: &[usize]) -> std::io::Result<usize> {
    // SAFETY: as in `current`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: `c` comes from `allowed()`, below CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    let mut moved = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Some(tid) = entry?.file_name().to_str().and_then(|n| n.parse::<libc::pid_t>().ok()) else { continue };
        // SAFETY: a thread id of this process; the size is that of `set`.
        if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } == 0 {
            moved += 1;
        } else {
            let e = std::io::Error::last_os_error();
            // A thread that ended since the listing is no concern.
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_take_the_cpus_background_leaves() {
        assert_eq!(workers_cpus(&[0, 1, 2, 3], &[]).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(workers_cpus(&[0, 1, 2, 3], &[3]).unwrap(), vec![0, 1, 2]);
        assert_eq!(workers_cpus(&[2, 3, 4, 5], &[2, 5]).unwrap(), vec![3, 4]);
    }

    #[test]
    fn every_problem_with_background_cpus_is_named() {
        let e = workers_cpus(&[0, 1, 2, 3, 6], &[1, 1, 9]).unwrap_err();
        assert!(e.contains("CPU 1 is listed twice"), "{e}");
        assert!(e.contains("CPU 9 is not one this process may run on (0-3,6)"), "{e}");
        let e = workers_cpus(&[0, 1], &[0, 1]).unwrap_err();
        assert!(e.contains("no CPU is left for the workers (0-1 in all)"), "{e}");
    }

    #[test]
    fn ranges_read_like_taskset() {
        assert_eq!(ranges(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(ranges(&[5]), "5");
        assert_eq!(ranges(&[]), "none");
    }

    /// In a process of its own (threads of the test harness would be moved too): every thread
    /// there is on the set afterwards, and a thread started later inherits it.
    #[test]
    fn moving_reaches_every_thread_and_what_they_start() {
        let all = allowed().to_vec();
        let Some(&last) = all.last() else { return };
        if std::env::var_os("SLUICE_CPUS_CHILD").is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "cpus::tests::moving_reaches_every_thread_and_what_they_start", "--nocapture", "--test-threads=1"])
                .env("SLUICE_CPUS_CHILD", "1")
                .output()
                .unwrap();
            assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            return;
        }
        let (tid_tx, tid_rx) = std::sync::mpsc::channel::<libc::pid_t>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let earlier = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = go_rx.recv();
        });
        let earlier_tid = tid_rx.recv().unwrap();
        assert!(move_all_threads(&[last]).unwrap() >= 2);
        assert_eq!(of_thread(earlier_tid).unwrap(), vec![last], "a thread started before the move");
        assert_eq!(current().unwrap(), vec![last], "the thread that moved them");
        // SAFETY: as above.
        let later = std::thread::spawn(|| of_thread(unsafe { libc::gettid() }).unwrap()).join().unwrap();
        assert_eq!(later, vec![last], "a thread started after the move");
        go_tx.send(()).unwrap();
        earlier.join().unwrap();
    }
}
