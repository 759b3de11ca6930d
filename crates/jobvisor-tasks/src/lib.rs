//! The built-in jobvisor tasks.
//!
//! Each task is a unit struct implementing [`jobvisor_worker::Task`]; register
//! them one by one, or all at once with [`register_builtins`] / [`builtin`].
//!
//! | name         | task            | input             | output             |
//! |--------------|-----------------|-------------------|--------------------|
//! | `"noop"`     | [`Noop`]        | `u64`             | `u64` (echo)       |
//! | `"spin"`     | [`Spin`]        | [`SpinInput`]     | [`SpinOutput`]     |
//! | `"sleep"`    | [`Sleep`]       | [`SleepInput`]    | `()`               |
//! | `"exec"`     | [`Exec`]        | [`ExecInput`]     | [`ExecOutput`]     |
//! | `"hash"`     | [`struct@Hash`] | [`HashInput`]     | [`HashOutput`]     |
//! | `"compress"` | [`Compress`]    | [`CompressInput`] | [`CompressOutput`] |
//!
//! All of them stop promptly when the call is cancelled or its soft deadline
//! passes, and return [`jobvisor_worker::TaskError::cancelled`] when they do.
//!
//! # Layout
//! - `basic`: [`Noop`], [`Spin`] and [`Sleep`], for benchmarks and tests of the
//!   pool itself.
//! - `exec`: [`Exec`], runs a program in its own process group with captured,
//!   size-capped output, a timeout and clean-up of the whole group.
//! - `hash`: [`struct@Hash`], SHA-256 of a file.
//! - `compress`: [`Compress`], zstd-compresses a file, replacing the
//!   destination atomically.
//! - `chunks`: the cancellable, progress-reporting read loop shared by `hash`
//!   and `compress`.

mod basic;
mod chunks;
mod compress;
mod exec;
mod hash;

use jobvisor_worker::Registry;

pub use basic::{Crash, CrashInput, Noop, Sleep, SleepInput, Spin, SpinInput, SpinOutput};
pub use compress::{Compress, CompressInput, CompressOutput};
pub use exec::{Exec, ExecInput, ExecOutput};
pub use hash::{Hash, HashInput, HashOutput};

/// Registers every built-in task in `r`, in the order of the table above.
///
/// # Panics
/// When `r` already holds a task with one of the built-in names (see
/// [`Registry::register`]).
pub fn register_builtins(r: &mut Registry) {
    r.register(Noop)
        .register(Spin)
        .register(Sleep)
        .register(Exec)
        .register(Hash)
        .register(Compress)
        .register(Crash);
}

/// A registry holding every built-in task.
#[must_use]
pub fn builtin() -> Registry {
    let mut r = Registry::new();
    register_builtins(&mut r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobvisor_worker::Task;

    #[test]
    fn builtin_registers_every_task_once() {
        let names: Vec<_> = builtin().names().collect();
        assert_eq!(
            names,
            [
                Noop::NAME,
                Spin::NAME,
                Sleep::NAME,
                Exec::NAME,
                Hash::NAME,
                Compress::NAME,
                Crash::NAME
            ]
        );
        assert_eq!(
            names,
            ["noop", "spin", "sleep", "exec", "hash", "compress", "crash"]
        );
    }
}
