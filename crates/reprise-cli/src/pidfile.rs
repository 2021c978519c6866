//! The pid file of `reprise serve --pid-file`, and `reprise reload`, which sends the server
//! named in it a SIGHUP.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The file that names this server's process, removed when dropped (if it still names this
/// process: a newer server may have replaced it).
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Writes this process's id to `path`: into a temporary file beside it, renamed over it, so
    /// that a reader never sees a half-written file.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .with_context(|| format!("pid-file: {} names no file", path.display()))?;
        let tmp = dir.join(format!(".{}.{pid}.tmp", name.to_string_lossy()));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| writeln!(f, "{pid}").and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(anyhow::Error::new(e))
                .with_context(|| format!("pid-file: cannot write {}", path.display()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            pid,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if read_pid(&self.path).ok() == Some(self.pid) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The process id a pid file names.
fn read_pid(path: &Path) -> anyhow::Result<u32> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("pid-file: cannot read {}", path.display()))?;
    match text.trim().parse::<u32>() {
        Ok(pid) if pid > 1 && i32::try_from(pid).is_ok() => Ok(pid),
        _ => anyhow::bail!(
            "pid-file: {} does not hold a process id (a number above 1)",
            path.display()
        ),
    }
}

/// `reprise reload`: sends SIGHUP to the server the pid file names.
pub fn reload(path: &Path) -> anyhow::Result<()> {
    let pid = read_pid(path).map_err(crate::startup)?;
    let target = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .with_context(|| format!("pid-file: {} does not hold a process id", path.display()))
        .map_err(crate::startup)?;
    rustix::process::kill_process(target, rustix::process::Signal::HUP)
        .map_err(std::io::Error::from)
        .with_context(|| format!("cannot signal process {pid} named in {}", path.display()))?;
    println!("sent SIGHUP to reprise serve (pid {pid})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_read_and_removed_only_if_still_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reprise.pid");
        let file = PidFile::create(&path).unwrap();
        assert_eq!(read_pid(&path).unwrap(), std::process::id());
        drop(file);
        assert!(!path.exists());
        // A file another server wrote since is left alone.
        let file = PidFile::create(&path).unwrap();
        std::fs::write(&path, "4242\n").unwrap();
        drop(file);
        assert_eq!(read_pid(&path).unwrap(), 4242);
    }

    #[test]
    fn bad_contents_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.pid");
        for text in ["", "abc", "0", "1", "-5", "99999999999"] {
            std::fs::write(&path, text).unwrap();
            assert!(read_pid(&path).is_err(), "{text:?}");
        }
        assert!(read_pid(&dir.path().join("missing.pid")).is_err());
    }
}
