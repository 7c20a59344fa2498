//! An exclusive lock on a file, held for a process's life, so two processes never work on
//! the same store: the coordinator on its database, the agent on its state directory.
//!
//! The lock is `flock(2)` (through `File::try_lock`): the kernel drops it when the holder
//! exits, `kill -9` included, so a stale lock file never blocks a restart. The holder writes
//! its process id into the file, and a refused process names it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// An exclusive lock, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct FileLock {
    /// The locked file.
    file: File,
    path: PathBuf,
}

impl Drop for FileLock {
    /// Unlocks before the file closes. Closing alone is not enough: a child forked by another
    /// thread between our open and its `exec` holds a duplicate of the descriptor, and the
    /// lock would stay until that child execs.
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("`{}` is held by {}", path.display(), holder_text(*holder))]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The holder's process id, when it wrote one.
        holder: Option<u32>,
    },
    /// The lock file could not be opened, locked or written.
    #[error("failed to lock `{}`", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn holder_text(holder: Option<u32>) -> String {
    match holder {
        Some(pid) => format!("process {pid}"),
        None => "another process".to_owned(),
    }
}

impl FileLock {
    /// Takes the lock on `path` (creating the file) without waiting, and writes this
    /// process's id into it.
    pub fn acquire(path: &Path) -> Result<FileLock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let holder = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(LockError::Held {
                    path: path.to_owned(),
                    holder,
                });
            }
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(FileLock {
            file,
            path: path.to_owned(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = FileLock::acquire(&path).unwrap();
        assert_eq!(first.path(), path);
        let err = FileLock::acquire(&path).unwrap_err();
        let pid = std::process::id();
        assert!(
            matches!(err, LockError::Held { holder: Some(p), .. } if p == pid),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .ends_with(&format!("is held by process {pid}")),
            "{err}"
        );
        drop(first);
        let again = FileLock::acquire(&path).unwrap();
        drop(again);
    }

    #[test]
    fn a_lock_file_in_a_missing_directory_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/x.lock");
        let err = FileLock::acquire(&path).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("no/such/x.lock"), "{err}");
    }
}
