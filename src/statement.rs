//! Which top-level statement is executing right now.
//!
//! With the extended protocol a session can have several top-level
//! statements open at once (suspended portals, cursors); the one whose
//! execution is on the stack is the one that nested statements belong to —
//! for grants (what a single-statement grant covers) and for the trail
//! (parent statement). The C trampolines report each resumption of a
//! top-level executor statement; a top-level utility or fast-path call is key 0.

use std::cell::Cell;

thread_local! {
    static RUNNING_TOP: Cell<usize> = const { Cell::new(0) };
}

/// The key of the top-level statement executing now (its `QueryDesc`, or 0).
pub fn running_top() -> usize {
    RUNNING_TOP.with(|r| r.get())
}

/// A top-level statement starts or resumes executing.
pub fn set_running_top(key: usize) {
    RUNNING_TOP.with(|r| r.set(key));
}
