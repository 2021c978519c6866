//! The systemd readiness protocol (`Type=notify`): a datagram to `$NOTIFY_SOCKET` saying that
//! the server serves (`READY=1`) or stops (`STOPPING=1`). Without the variable, nothing.

use std::os::unix::net::UnixDatagram;

/// Tells the service manager `state` (`READY=1`, `STOPPING=1`), if it listens. A failure is
/// logged, never fatal: the server serves either way.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // A socket in the abstract namespace (Linux).
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Some(name) => {
                #[cfg(target_os = "android")]
                use std::os::android::net::SocketAddrExt;
                #[cfg(target_os = "linux")]
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            _ => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "cannot notify the service manager");
    }
}
