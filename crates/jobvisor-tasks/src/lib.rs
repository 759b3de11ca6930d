//! The built-in jobvisor tasks.
//!
//! Each task is a unit struct implementing [`jobvisor_worker::Task`] (CPU) or
//! [`jobvisor_worker::AsyncTask`] (I/O, run on the worker's event loop);
//! register them one by one, or all at once with [`register_builtins`] /
//! [`builtin`].
//!
//! | name         | kind  | task            | input             | output             |
//! |--------------|-------|-----------------|-------------------|--------------------|
//! | `"noop"`     | CPU   | [`Noop`]        | `u64`             | `u64` (echo)       |
//! | `"spin"`     | CPU   | [`Spin`]        | [`SpinInput`]     | [`SpinOutput`]     |
//! | `"sleep"`    | async | [`Sleep`]       | [`SleepInput`]    | `()`               |
//! | `"exec"`     | CPU   | [`Exec`]        | [`ExecInput`]     | [`ExecOutput`]     |
//! | `"hash"`     | CPU   | [`struct@Hash`] | [`HashInput`]     | [`HashOutput`]     |
//! | `"compress"` | CPU   | [`Compress`]    | [`CompressInput`] | [`CompressOutput`] |
//! | `"crash"`    | CPU   | [`Crash`]       | [`CrashInput`]    | never returns      |
//! | `"http"`     | async | [`Http`]        | [`HttpInput`]     | [`HttpOutput`]     |
//! | `"notify"`   | async | [`Notify`]      | [`NotifyInput`]   | [`NotifyOutput`]   |
//!
//! All of them stop promptly when the call is cancelled or its soft deadline
//! passes: the CPU tasks return [`jobvisor_worker::TaskError::cancelled`], the
//! async ones are dropped at their current `.await`.
//!
//! # Layout
//! - `basic`: [`Noop`], [`Spin`] and [`Sleep`], for benchmarks and tests of the
//!   pool itself.
//! - `exec`: [`Exec`], runs a program in its own process group with captured,
//!   size-capped output, a timeout and clean-up of the whole group.
//! - `hash`: [`struct@Hash`], SHA-256 of a file.
//! - `compress`: [`Compress`], zstd-compresses a file, replacing the
//!   destination atomically.
//! - `http`: [`Http`] (one HTTP request, body returned or saved atomically)
//!   and [`Notify`] (POST a JSON document), on one client per worker.
//! - `args`: the JSON and native forms of `exec`'s argv (bytes, base64 in
//!   JSON when not UTF-8) and env.
//! - `chunks`: the cancellable, progress-reporting read loop shared by `hash`
//!   and `compress`.
//! - `tmpfile`: the self-removing temporary file that `compress` and `http`
//!   rename over their destination.

mod args;
mod basic;
mod chunks;
mod compress;
mod exec;
mod hash;
mod http;
mod tmpfile;

use jobvisor_worker::Registry;

pub use args::{arg_json, BASE64_KEY};
pub use basic::{Crash, CrashInput, Noop, Sleep, SleepInput, Spin, SpinInput, SpinOutput};
pub use compress::{Compress, CompressInput, CompressOutput};
pub use exec::{Exec, ExecInput, ExecOutput};
pub use hash::{Hash, HashInput, HashOutput};
pub use http::{
    Http, HttpInput, HttpOutput, Notify, NotifyInput, NotifyOutput, DEFAULT_CONNECT_TIMEOUT_MS,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_TIMEOUT_MS, MAX_RETURNED_BODY_BYTES, POOL_IDLE_TIMEOUT,
    POOL_MAX_IDLE_PER_HOST,
};

/// Registers every built-in task in `r`, in the order of the table above.
///
/// # Panics
/// When `r` already holds a task with one of the built-in names (see
/// [`Registry::register`]).
pub fn register_builtins(r: &mut Registry) {
    r.register(Noop)
        .register(Spin)
        .register_async(Sleep)
        .register(Exec)
        .register(Hash)
        .register(Compress)
        .register(Crash)
        .register_async(Http)
        .register_async(Notify);
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
    use jobvisor_worker::{AsyncTask, Task};

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
                Crash::NAME,
                Http::NAME,
                Notify::NAME,
            ]
        );
        assert_eq!(
            names,
            ["noop", "spin", "sleep", "exec", "hash", "compress", "crash", "http", "notify"]
        );
    }
}
