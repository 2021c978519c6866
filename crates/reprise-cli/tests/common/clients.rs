//! The client programs of `tests/interop/` (Go `crypto/tls`, Node.js `tls`, Python `ssl`) and
//! the tools the black-box tests run, shared by the interop suite and the ticket tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The client programs' directory.
pub fn programs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Runs `cmd` under `timeout 30`, with `stdin`; its output.
pub fn run(cmd: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new("timeout")
        .arg("30")
        .arg(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// Asserts that `tool` is installed, naming the package that provides it.
pub fn require(tool: &str, version_flag: &str, package: &str) {
    let found = Command::new(tool)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is not installed: run scripts/test.sh (it installs {package})"
    );
}

/// The Go client, built once per test process with the standard library only (no module, no
/// proxy, no network), its build cache in Cargo's temporary directory for tests.
pub fn go_client() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        require("go", "version", "golang-go");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-go");
        std::fs::create_dir_all(&dir).unwrap();
        // One binary per test process: several test binaries may build at once.
        let bin = dir.join(format!("client-{}", std::process::id()));
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg("client.go")
            .current_dir(programs())
            .env("GOCACHE", dir.join("cache"))
            .env("GOPATH", dir.join("gopath"))
            .env("GO111MODULE", "off")
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOENV", "off")
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "go build client.go: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

/// What one run of a client program printed: per connection, whether the client's TLS stack
/// and the responder's body both said it resumed.
pub struct ProgramRun {
    /// Per connection, in order: resumed as both sides saw it.
    pub resumed: Vec<bool>,
    /// Whether the program exited well and printed one line per connection.
    pub whole: bool,
    /// What it printed, for failure messages.
    pub detail: String,
}

impl ProgramRun {
    /// How many connections after the first resumed (0 unless the run was whole).
    pub fn resumed_after_first(&self) -> usize {
        if self.whole {
            self.resumed.iter().skip(1).filter(|r| **r).count()
        } else {
            0
        }
    }
}

/// Runs a client program (`go`, `node` or `python`): `count` sequential connections, each
/// offering the session the one before left, connection n to `addrs[n mod len]`, each closed
/// as `mode` says (`notify`, `fin`, `rst`, `server`). The Node client takes one address only.
pub fn program(
    client: &str,
    addrs: &[String],
    ca: &str,
    tls: &str,
    mode: &str,
    count: usize,
) -> ProgramRun {
    let connect = addrs.join(",");
    let count_arg = count.to_string();
    let flags = [
        "--connect",
        connect.as_str(),
        "--servername",
        "localhost",
        "--ca",
        ca,
        "--tls",
        tls,
        "--mode",
        mode,
        "--count",
        &count_arg,
    ];
    let dir = programs();
    let out = match client {
        "go" => run(go_client().to_str().unwrap(), &flags, b""),
        "node" => {
            require("node", "--version", "nodejs");
            let script = dir.join("client.js").to_string_lossy().into_owned();
            run("node", &[&[script.as_str()][..], &flags].concat(), b"")
        }
        "python" => {
            require("python3", "--version", "python3");
            let script = dir.join("client.py").to_string_lossy().into_owned();
            run("python3", &[&[script.as_str()][..], &flags].concat(), b"")
        }
        other => panic!("no client {other}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let resumed: Vec<bool> = stdout
        .lines()
        .map(|l| l.contains("client=yes") && l.contains("server=yes"))
        .collect();
    ProgramRun {
        whole: out.status.success() && resumed.len() == count,
        resumed,
        detail: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    }
}
