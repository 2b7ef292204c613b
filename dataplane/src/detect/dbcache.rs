//! Compiled Hyperscan databases kept on disk between starts.
//!
//! Compiling the rule packs takes about two seconds of CPU (nearly all of it inside Hyperscan's
//! compiler); `sluice stdio` pays that at every launch of every local server, the gateway at
//! every start and reload. A database is a pure function of what was compiled — every pattern's
//! expression, flags, id and start-of-match horizon, the mode — and of the Hyperscan build and
//! the host it tunes for (CPU features), so it is cached under the blake3 of exactly that and
//! loaded instead of compiled when present.
//!
//! A cache file is `blake3(payload) ‖ payload` (Hyperscan's serialised form): a torn or altered
//! file does not load and is compiled again. The directory is used only when it belongs to this user and no one
//! else may write to it: a database planted there would decide what detection sees.
//! Any failure to read or write the cache is a compile, never an error.

use hyperscan::prelude::*;
use hyperscan::{Mode, Serialized};
use std::fmt::Debug;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The cache directory: `SLUICE_DB_CACHE` (`off` disables), systemd's `CACHE_DIRECTORY`,
/// `XDG_CACHE_HOME/sluice/hyperscan`, or `~/.cache/sluice/hyperscan`.
pub fn dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SLUICE_DB_CACHE").filter(|d| !d.is_empty()) {
        return (d != "off").then(|| PathBuf::from(d));
    }
    crate::config::user_dir("CACHE_DIRECTORY", "XDG_CACHE_HOME", ".cache").map(|d| d.join("hyperscan"))
}

/// `what`'s database in mode `M` (`mode` names it in the key): loaded from `dir` when a
/// good copy is there, else compiled and stored.
pub fn build<B, M>(dir: Option<&Path>, mode: &str, what: &B) -> Result<Database<M>, hyperscan::Error>
where
    B: Builder<Err = hyperscan::Error> + Debug,
    M: Mode,
{
    let Some(dir) = dir.filter(|d| usable(d)) else {
        return what.build::<M>();
    };
    let mut h = blake3::Hasher::new();
    h.update(hyperscan::version_str().to_bytes());
    for x in host_platform() {
        h.update(&x.to_le_bytes());
    }
    h.update(mode.as_bytes());
    h.update(format!("{what:?}").as_bytes());
    static PRUNED: std::sync::Once = std::sync::Once::new();
    PRUNED.call_once(|| prune(dir, std::time::SystemTime::now()));
    let path = dir.join(format!("{}.hsdb", h.finalize().to_hex()));
    if let Some(db) = load::<M>(&path) {
        // Used: kept from pruning for another while.
        let _ = std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        return Ok(db);
    }
    let db = what.build::<M>()?;
    if let Err(e) = store(&path, &db) {
        tracing::debug!(path = %path.display(), error = %e, "compiled rule database not cached");
    }
    Ok(db)
}

/// The host as Hyperscan compiles for it (tuning, CPU features): a database built on another
/// kind of machine (a cache in a shared home directory) is another entry, compiled here.
fn host_platform() -> [u64; 2] {
    let mut info = std::mem::MaybeUninit::<hyperscan_sys::hs_platform_info_t>::zeroed();
    // SAFETY: hs_populate_platform only writes the struct it is given.
    let rc = unsafe { hyperscan_sys::hs_populate_platform(info.as_mut_ptr()) };
    // SAFETY: zeroed is a valid value of this plain C struct, and filled when rc is success.
    let info = unsafe { info.assume_init() };
    if rc == 0 {
        [u64::from(info.tune), info.cpu_features]
    } else {
        [u64::MAX; 2]
    }
}

/// Entries unused for this long are removed (each rule-pack change leaves its databases behind,
/// ~11 MB for the shipped packs).
const KEEP_UNUSED: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Remove entries not used for [`KEEP_UNUSED`], and temporary files a writer that died left
/// (older than an hour), as of `now`. Once per process.
fn prune(dir: &Path, now: std::time::SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        let keep = if name.ends_with(".hsdb") {
            KEEP_UNUSED
        } else if name.contains(".tmp") {
            std::time::Duration::from_secs(3600)
        } else {
            continue;
        };
        let age = e.metadata().and_then(|m| m.modified()).ok().and_then(|m| now.duration_since(m).ok());
        if age.is_some_and(|a| a > keep) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Ours and not writable by anyone else (created so when missing).
fn usable(dir: &Path) -> bool {
    if !dir.exists() {
        let made = std::fs::create_dir_all(dir).and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)));
        if made.is_err() {
            return false;
        }
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() && m.uid() == me && m.mode() & 0o022 == 0 => true,
        Ok(_) => {
            tracing::warn!(dir = %dir.display(), "the rule database cache is not owned by this user or is writable by others; not used (compiling instead)");
            false
        }
        Err(_) => false,
    }
}

fn load<M: Mode>(path: &Path) -> Option<Database<M>> {
    let bytes = std::fs::read(path).ok()?;
    let (sum, payload) = bytes.split_at_checked(32)?;
    if blake3::hash(payload).as_bytes() != sum {
        tracing::warn!(path = %path.display(), "a cached rule database does not match its checksum; compiling instead");
        return None;
    }
    payload.deserialize::<M>().ok()
}

fn store<M>(path: &Path, db: &Database<M>) -> std::io::Result<()> {
    let payload = db.serialize().map_err(|e| std::io::Error::other(e.to_string()))?;
    // Unique per writer: processes, and threads of one process, may store the same entry at once.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(blake3::hash(&payload).as_bytes())?;
    f.write_all(&payload)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperscan::{Block, Streaming};

    fn patterns() -> Patterns {
        let mut a = Pattern::with_flags(r"\bAKIA[0-9A-Z]{16}\b", CompileFlags::SOM_LEFTMOST).unwrap();
        a.id = Some(7);
        let mut b = Pattern::with_flags(r"secret=\w{8,}", CompileFlags::CASELESS).unwrap();
        b.id = Some(9);
        Patterns::from(vec![a, b])
    }

    fn ends(db: &BlockDatabase, text: &str) -> Vec<(u32, u64, u64)> {
        let scratch = db.alloc_scratch().unwrap();
        let mut out = Vec::new();
        db.scan(text, &scratch, |id, from, to, _| {
            out.push((id, from, to));
            Matching::Continue
        })
        .unwrap();
        out
    }

    #[test]
    fn a_cached_database_matches_as_the_compiled_one_and_a_damaged_file_is_compiled_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("hs");
        let text = "key AKIAZ3MNOPQRSTUV7XYZ and SECRET=hunter2hunter2";
        let fresh = ends(&patterns().build::<Block>().unwrap(), text);
        assert!(fresh.iter().any(|m| m.0 == 7) && fresh.iter().any(|m| m.0 == 9), "{fresh:?}");
        let first = build::<_, Block>(Some(&dir), "block", &patterns()).unwrap();
        let files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "stored once: {files:?}");
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let loaded = load::<Block>(&files[0]).expect("loads back");
        assert_eq!(ends(&first, text), fresh);
        assert_eq!(ends(&loaded, text), fresh);
        // Another mode or other patterns are other entries.
        build::<_, Streaming>(Some(&dir), "streaming", &patterns()).unwrap();
        let mut other = patterns();
        other[1].id = Some(10);
        build::<_, Block>(Some(&dir), "block", &other).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
        // One flipped byte: not loaded, compiled again, and the file rewritten good.
        let mut bytes = std::fs::read(&files[0]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&files[0], &bytes).unwrap();
        assert!(load::<Block>(&files[0]).is_none());
        assert_eq!(ends(&build::<_, Block>(Some(&dir), "block", &patterns()).unwrap(), text), fresh);
        assert!(load::<Block>(&files[0]).is_some(), "rewritten");
        // A truncated file neither.
        std::fs::write(&files[0], &bytes[..10]).unwrap();
        assert!(load::<Block>(&files[0]).is_none());
    }

    #[test]
    fn entries_unused_for_a_month_and_dead_writers_temporaries_are_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(24 * 3600);
        let files = [("old.hsdb", 31 * day), ("recent.hsdb", 29 * day), ("x.tmp12-0", 2 * 3600 * std::time::Duration::from_secs(1)), ("y.tmp12-1", std::time::Duration::from_secs(60)), ("other.txt", 400 * day)];
        for (name, age) in files {
            let f = std::fs::File::create(dir.join(name)).unwrap();
            f.set_modified(now - age).unwrap();
        }
        prune(dir, now);
        let mut left: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["other.txt", "recent.hsdb", "y.tmp12-1"]);
    }

    #[test]
    fn a_directory_others_may_write_to_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("hs");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(!usable(&dir));
        let db = build::<_, Block>(Some(&dir), "block", &patterns()).unwrap();
        assert_eq!(ends(&db, "AKIAZ3MNOPQRSTUV7XYZ").len(), 1, "compiled all the same");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing written there");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(usable(&dir));
    }
}
