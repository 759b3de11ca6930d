//! Integration tests of the process pool with real worker processes, for both
//! start methods: one test binary, one module per behaviour. `harness =
//! false`: `main` starts the fork server while the process is still
//! single-threaded, then runs the tests (see `helper`).

mod helper;
mod support;
mod tasks;

mod calls;
mod crash;
mod fds;
mod io;
mod link;
mod liveness;
mod memory;
mod shutdown;
mod timeout;

use std::process::ExitCode;

use helper::{Test, TestFn};
use jobvisor_pool::{bootstrap_with, Bootstrap, BootstrapOptions};
use tasks::{die_if_flagged, registry, DIE_FLAG_ENV, PRELOADED};

macro_rules! tests {
    ($($module:ident :: $name:ident $(only $m:ident)?),* $(,)?) => {
        vec![$(Test {
            name: stringify!($name),
            run: (|m| Box::pin($module::$name(m))) as TestFn,
            only: None $(.or(Some(jobvisor_pool::StartMethod::$m)))?,
        }),*]
    };
}

fn main() -> ExitCode {
    // Set before the fork server starts, so every worker inherits it (a
    // spawned worker re-runs main and keeps the inherited value).
    if std::env::var_os(DIE_FLAG_ENV).is_none() {
        std::env::set_var(
            DIE_FLAG_ENV,
            std::env::temp_dir().join(format!("jobvisor-die-{}", std::process::id())),
        );
    }
    if !jobvisor_pool::is_spawned_worker() {
        fds::leave_inheritable_fds();
    }
    let options = BootstrapOptions {
        fork_server: true,
        initializer: Some(Box::new(|| {
            let _ = PRELOADED.set(4242);
        })),
        worker_init: Some(die_if_flagged),
    };
    match bootstrap_with(registry(), options).expect("bootstrap") {
        Bootstrap::Worker(code) => return code,
        Bootstrap::Supervisor => {}
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let tests = tests![
        calls::results_are_correct,
        calls::hundred_thousand_tasks,
        crash::sigkill_mid_task_fails_only_that_task,
        crash::crash_reports_exit_code_and_last_output,
        crash::panic_and_error_keep_the_worker,
        timeout::infinite_loop_hits_timeout_and_worker_is_replaced,
        timeout::a_timeout_counts_from_when_the_worker_starts_the_call,
        timeout::a_crash_past_the_deadline_is_a_crash_not_a_timeout,
        timeout::a_hung_call_queued_behind_a_finished_one_still_times_out,
        calls::stdout_noise_does_not_corrupt_the_protocol,
        crash::thousand_restarts_leak_no_fds,
        calls::bad_input_fails_only_that_call,
        shutdown::cancel_queued_and_running,
        shutdown::graceful_shutdown_drains,
        shutdown::terminate_fails_running_and_queued,
        calls::initializer_state_reaches_workers,
        calls::exec_task_through_the_pool,
        shutdown::resize_grows_and_shrinks_without_losing_calls,
        memory::memory_limit_fails_the_task_and_replaces_the_worker,
        memory::soft_memory_limit_recycles_between_calls,
        memory::soft_memory_limit_drains_a_worker_with_async_calls,
        timeout::stall_timeout_catches_a_stopped_worker,
        crash::restart_intensity_bounds_a_crash_loop,
        calls::call_usage_tells_computing_from_waiting,
        crash::a_death_is_charged_to_the_call_that_caused_it,
        io::io_calls_run_together_beside_cpu_calls,
        io::io_timeout_cancel_and_panic_keep_the_worker,
        io::a_blocked_event_loop_is_killed_and_only_its_blocker_fails,
        io::a_crash_in_a_poll_is_charged_to_that_call,
        io::panics_outside_the_task_body_fail_one_call,
        io::an_abort_on_the_event_loop_is_not_charged_to_the_cpu_call,
        memory::cpu_calls_over_the_soft_limit_drain_a_worker_holding_async_calls,
        shutdown::control_commands_do_not_wait_behind_a_full_queue,
        io::async_stall_timeouts_follow_heartbeats,
        memory::recycling_counts_calls_of_both_kinds,
        fds::a_worker_holds_only_its_own_fds,
        crash::a_panic_message_survives_a_backtrace,
        crash::a_call_that_hides_from_the_beacon_is_charged_in_the_end,
        crash::innocents_beside_a_hidden_crash_are_not_charged,
        link::a_frame_that_never_completes_replaces_the_worker,
        liveness::a_stopped_worker_holding_a_call_is_replaced,
        liveness::an_event_loop_stuck_in_a_poll_is_replaced,
        liveness::a_long_cpu_task_keeps_its_worker,
        liveness::an_async_call_waiting_keeps_its_worker,
        liveness::an_idle_stopped_worker_is_left_alone,
        memory::a_dead_workers_peak_rss_is_its_own,
    ];
    helper::run_all(&tests)
}
