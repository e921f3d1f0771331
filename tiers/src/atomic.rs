//! Whole-file writes that a reader (or a crash) never sees half done: the bytes go to a
//! temporary file in the same directory, which then takes the file's name in one step.
//!
//! One place for what the Raft store, the client journals and the shared regions' home all
//! need, so each states only how durable its write must be ([`Durability`]) and whether it may
//! replace a file already there ([`write_atomic`] may, [`create_atomic`] never does).
//!
//! The temporary file is `.<name>.tmp` beside the file: hidden, unique per final name, and
//! recognisable by its `tmp` extension for whoever cleans up after a crash.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What a write must survive once the call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The death of the writing process (the bytes are in the page cache); a machine crash
    /// may lose the write, or leave the old file.
    Process,
    /// The file's bytes reach the disk before it appears under its name, but the name itself
    /// is durable only once the caller fsyncs the directory (one fsync for a batch of files).
    File,
    /// File and name both on disk.
    Full,
}

/// The temporary name [`write_atomic`] and [`create_atomic`] write `path` under.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().expect("a file name").to_string_lossy();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes the concatenation of `parts` to `path`, replacing any file there.
pub fn write_atomic(path: &Path, parts: &[&[u8]], durability: Durability) -> io::Result<()> {
    let tmp = write_temp(path, parts, durability)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if durability == Durability::Full {
        fsync_dir(parent(path))?;
    }
    Ok(())
}

/// Writes the concatenation of `parts` to `path`, which must not exist: a file already there
/// is never replaced, whatever the timing (`link(2)` fails rather than overwrite, on local
/// filesystems and on NFS alike, where `renameat2(RENAME_NOREPLACE)` is not supported). An
/// existing file is an `AlreadyExists` error.
pub fn create_atomic(path: &Path, parts: &[&[u8]], durability: Durability) -> io::Result<()> {
    let tmp = write_temp(path, parts, durability)?;
    let linked = match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(()),
        // Over NFS a retransmitted LINK whose first reply was lost answers EEXIST although it
        // was ours: then the temporary file has two names.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match fs::metadata(&tmp) {
            Ok(m) if m.nlink() == 2 => Ok(()),
            _ => Err(e),
        },
        Err(e) => Err(e),
    };
    let removed = fs::remove_file(&tmp);
    linked?;
    // Gone already is fine: the file has its name (a cleaner may remove temporary files).
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if durability == Durability::Full {
        fsync_dir(parent(path))?;
    }
    Ok(())
}

/// fsyncs directory `dir`, making the names created or removed in it durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn write_temp(path: &Path, parts: &[&[u8]], durability: Durability) -> io::Result<PathBuf> {
    let tmp = temp_path(path);
    let written = (|| {
        let mut f = File::create(&tmp)?;
        for p in parts {
            f.write_all(p)?;
        }
        if durability != Durability::Process {
            f.sync_all()?;
        }
        Ok(())
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(label: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("holo-atomic-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn write_replaces_and_create_never_does() {
        let d = dir("both");
        let p = d.join("f.json");
        for durability in [Durability::Process, Durability::File, Durability::Full] {
            write_atomic(&p, &[b"ab", b"cd"], durability).unwrap();
            assert_eq!(fs::read(&p).unwrap(), b"abcd");
        }
        write_atomic(&p, &[b"new"], Durability::Full).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        let e = create_atomic(&p, &[b"other"], Durability::Full).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"new", "the existing file is kept");
        let q = d.join("g");
        create_atomic(&q, &[b"x", b"y"], Durability::Full).unwrap();
        assert_eq!(fs::read(&q).unwrap(), b"xy");
        // No temporary file is left behind, whether the write succeeded or not.
        let mut names: Vec<_> = fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["f.json", "g"]);
        // A write into a directory that does not exist fails and leaves nothing.
        assert!(write_atomic(&d.join("none/f"), &[b"x"], Durability::Full).is_err());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn the_temporary_name_is_hidden_and_per_file() {
        assert_eq!(temp_path(Path::new("/a/b/0001.json")), Path::new("/a/b/.0001.json.tmp"));
        assert_eq!(temp_path(Path::new("x.5")), Path::new(".x.5.tmp"));
        assert_eq!(temp_path(Path::new("/a/x.5")).extension().unwrap(), "tmp");
    }
}
