//! The README's library example, compiled (and run by `cargo run --example word_count`).

use jobvisor_pool::{bootstrap, Bootstrap, Ctx, Pool, Task, TaskError};
use serde::{Deserialize, Serialize};

/// A task is a named, typed function that runs in a worker process.
struct WordCount;

#[derive(Serialize, Deserialize)]
struct Text(String);

impl Task for WordCount {
    const NAME: &'static str = "word_count";
    type Input = Text;
    type Output = usize;
    fn run(&self, input: Text, ctx: &mut Ctx<'_>) -> Result<usize, TaskError> {
        if ctx.is_cancelled() {
            return Err(TaskError::cancelled());
        }
        Ok(input.0.split_whitespace().count())
    }
}

fn main() -> std::process::ExitCode {
    // First thing in main, while the process is single-threaded: starts the
    // fork server (or, in a worker started by the `spawn` method, runs it).
    let registry = jobvisor_tasks::builtin().with(WordCount);
    match bootstrap(registry).expect("bootstrap") {
        Bootstrap::Worker(code) => return code,
        Bootstrap::Supervisor => {}
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let pool = Pool::builder().build().await.expect("pool"); // one worker per core
        let n = pool
            .apply::<WordCount>(&Text("to be or not".into()))
            .await
            .unwrap();
        assert_eq!(n, 4);
        let texts = vec![Text("a b".into()), Text("c".into())];
        assert_eq!(pool.map::<WordCount>(texts, 0).await.unwrap(), vec![2, 1]);
        pool.shutdown().await; // drain, stop and reap every worker
    });
    std::process::ExitCode::SUCCESS
}
