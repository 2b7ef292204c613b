//! The caller of a stdio gateway: the operating-system user running the process (a process
//! cannot pose as another user), with that user's groups.

use crate::identity::Identity;

/// The caller: the operating-system user this process runs as, with its groups.
pub fn os_identity() -> Identity {
    // SAFETY: getuid cannot fail and touches no memory of ours.
    let uid = unsafe { libc::getuid() };
    let subject = user_name(uid).unwrap_or_else(|| format!("uid:{uid}"));
    Identity { subject, groups: os_groups(), agent_type: None, via: "os_user", claims: None }
}

pub(super) fn user_name(uid: libc::uid_t) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: an all-zero passwd is a valid value for getpwuid_r to fill.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the strings it sets point into `buf`.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name is a NUL-terminated string inside `buf`, which is still alive.
    Some(unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }.to_string_lossy().into_owned())
}

pub(super) fn os_groups() -> Vec<String> {
    // SAFETY: a zero count asks only for the number of groups.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let mut ids = vec![0 as libc::gid_t; n.max(0) as usize];
    // SAFETY: `ids` has room for `n` entries.
    let n = unsafe { libc::getgroups(ids.len() as libc::c_int, ids.as_mut_ptr()) };
    ids.truncate(n.max(0) as usize);
    // SAFETY: getgid cannot fail.
    let primary = unsafe { libc::getgid() };
    if !ids.contains(&primary) {
        ids.insert(0, primary);
    }
    let mut names: Vec<String> = ids.into_iter().map(|g| group_name(g).unwrap_or_else(|| format!("gid:{g}"))).collect();
    names.dedup();
    names
}

pub(super) fn group_name(gid: libc::gid_t) -> Option<String> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero group is a valid value for getgrgid_r to fill.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the strings it sets point into `buf`.
    let rc = unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || gr.gr_name.is_null() {
        return None;
    }
    // SAFETY: gr_name is a NUL-terminated string inside `buf`, which is still alive.
    Some(unsafe { std::ffi::CStr::from_ptr(gr.gr_name) }.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caller_is_the_operating_system_user() {
        let id = os_identity();
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let expected = user_name(uid).unwrap_or_else(|| format!("uid:{uid}"));
        assert_eq!(id.subject, expected);
        assert!(!id.subject.is_empty());
        assert!(!id.groups.is_empty(), "the primary group at least");
        assert_eq!(id.via, "os_user");
    }
}
