//! Running a call that may panic on a damaged file (redb on a file altered outside it) with the
//! panic caught, and the default panic message kept off stderr: the caller logs one line.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Set while this thread runs a call under [`catch_quietly`].
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

static HOOK: Once = Once::new();

/// Installs, once per process, a panic hook that stays silent for a thread inside
/// [`catch_quietly`] and hands every other panic to the hook that was there before.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs `f`; a panic inside it is caught and returned as its message, without the default
/// panic output. Other threads' panics are reported as before.
pub(crate) fn catch_quietly<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    install_hook();
    let was = QUIET.with(|q| q.replace(true));
    // `f` owns or borrows only what the caller discards when it panics (a half-opened
    // database), so nothing left in a broken state is seen after the unwind.
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.map_err(|payload| {
        if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a panic".to_owned()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_caught_with_its_message() {
        assert_eq!(catch_quietly(|| 7), Ok(7));
        let caught = catch_quietly(|| -> u8 { panic!("page {} out of range", 12) });
        assert_eq!(caught, Err("page 12 out of range".to_owned()));
        let caught = catch_quietly(|| -> u8 { std::panic::panic_any(5u32) });
        assert_eq!(caught, Err("a panic".to_owned()));
        // Outside the call, the thread is no longer quiet.
        assert!(!QUIET.with(Cell::get));
    }
}
