//! The path Velox answers with (docs/velox.md, "The artifact path"): mapped through `path_map`,
//! resolved, kept inside `artifact_root`, and opened only when it is a non-empty regular file,
//! without ever waiting on a FIFO or a device.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::config::PathMap;

/// Why an artifact path was refused. Logged in full; the client sees only a generic message.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("the path {0} is not absolute")]
    NotAbsolute(PathBuf),
    /// Nothing is at the path (Velox's own cache can answer a file it has since deleted).
    #[error("the path {0} does not exist")]
    Vanished(PathBuf),
    #[error("the path {0} cannot be resolved: {1}")]
    Unresolvable(PathBuf, std::io::Error),
    #[error("the path {0} resolves to {1}, outside artifact_root")]
    OutsideRoot(PathBuf, PathBuf),
    #[error("the path {0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("the file {0} is empty")]
    Empty(PathBuf),
    #[error("the file {0} cannot be opened: {1}")]
    Open(PathBuf, std::io::Error),
}

/// Maps Velox's path through `path_map`, resolves symlinks, and opens it only when it is a
/// non-empty regular file inside `artifact_root` (itself resolved). Never waits on a FIFO or a
/// device: those are refused before they are opened, and the open itself cannot block.
pub fn open_artifact(
    velox_path: &str,
    path_map: Option<&PathMap>,
    artifact_root: &Path,
) -> Result<File, PathError> {
    use std::os::unix::fs::OpenOptionsExt;

    let raw = Path::new(velox_path);
    if !raw.is_absolute() {
        return Err(PathError::NotAbsolute(raw.to_path_buf()));
    }
    let mapped = match path_map {
        Some(pm) => pm.apply(raw),
        None => raw.to_path_buf(),
    };
    let root = artifact_root
        .canonicalize()
        .map_err(|e| PathError::Unresolvable(artifact_root.to_path_buf(), e))?;
    let real = mapped.canonicalize().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PathError::Vanished(mapped.clone()),
        _ => PathError::Unresolvable(mapped.clone(), e),
    })?;
    if !real.starts_with(&root) || real == root {
        return Err(PathError::OutsideRoot(mapped, real));
    }
    match std::fs::symlink_metadata(&real) {
        Ok(meta) if !meta.is_file() => return Err(PathError::NotAFile(real)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PathError::Vanished(real))
        }
        Err(e) => return Err(PathError::Open(real, e)),
    }
    // A FIFO or device swapped in since that look cannot make open(2) wait (O_NONBLOCK), nor can
    // a symlink swapped in lead elsewhere (O_NOFOLLOW: the resolved path has none left).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&real)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => PathError::Vanished(real.clone()),
            Some(libc::ELOOP) => PathError::NotAFile(real.clone()),
            _ => PathError::Open(real.clone(), e),
        })?;
    // Checked on the open handle, so a swap after the checks above cannot slip through.
    let meta = file
        .metadata()
        .map_err(|e| PathError::Open(real.clone(), e))?;
    if !meta.is_file() {
        return Err(PathError::NotAFile(real));
    }
    if meta.len() == 0 {
        return Err(PathError::Empty(real));
    }
    clear_nonblocking(&file).map_err(|e| PathError::Open(real, e))?;
    Ok(file)
}

/// Reads of a regular file never block anyway; the handle goes on as a plain file.
fn clear_nonblocking(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl(2) on a descriptor this function borrows for the call; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_and_missing_files_are_told_apart_without_blocking() {
        let dir = tempfile::tempdir().expect("tmp");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let path = |p: &Path| p.display().to_string();
        // No writer: a blocking open would wait forever.
        assert!(matches!(
            open_artifact(&path(&fifo), None, dir.path()),
            Err(PathError::NotAFile(_))
        ));
        assert!(matches!(
            open_artifact(&path(&dir.path().join("gone/rr")), None, dir.path()),
            Err(PathError::Vanished(_))
        ));
        let file = dir.path().join("rr");
        std::fs::write(&file, b"binary").expect("write");
        let opened = open_artifact(&path(&file), None, dir.path()).expect("a regular file");
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl(2) F_GETFL on an open descriptor.
        let flags = unsafe { libc::fcntl(opened.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0, "handed on as a plain file");
    }
}
