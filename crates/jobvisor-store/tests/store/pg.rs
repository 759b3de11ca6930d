//! The PostgreSQL side of the tests: the server `scripts/postgres` starts
//! (once per test binary), and a fresh schema per test.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use jobvisor_store::PostgresStore;

use super::Backend;

/// Starts the server (a no-op when it runs) and returns its URL.
pub(crate) fn server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/postgres");
        let started = Command::new(script).arg("start").status().unwrap();
        assert!(started.success(), "scripts/postgres start: {started}");
        let out = Command::new(script).arg("url").output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// A schema of its own on the test server; dropped with everything in it.
pub(crate) struct Pg {
    pub(crate) url: String,
    schema: String,
}

impl Pg {
    pub(crate) fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = server();
        let schema = format!(
            "t{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = postgres::Client::connect(base, postgres::NoTls).unwrap();
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .unwrap();
        // The key=value form: `options` sets the schema of every connection.
        let (host_port, db) = base
            .trim_start_matches("postgres://jobvisor@")
            .split_once('/')
            .unwrap();
        let (host, port) = host_port.split_once(':').unwrap();
        let url = format!(
            "host={host} port={port} user=jobvisor dbname={db} application_name={schema} options='-csearch_path={schema}'"
        );
        Pg { url, schema }
    }

    /// A plain connection to the same schema (for SQL the tests run).
    pub(crate) fn sql(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }
}

impl Backend for Pg {
    type Store = PostgresStore;
    fn open(&self) -> PostgresStore {
        PostgresStore::open(&self.url).unwrap()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        // On a thread of its own: the blocking client may not run on a
        // runtime's thread, and async tests drop their backend on one.
        let drop_schema = format!("DROP SCHEMA {} CASCADE", self.schema);
        let _ = std::thread::spawn(move || {
            if let Ok(mut admin) = postgres::Client::connect(server(), postgres::NoTls) {
                let _ = admin.batch_execute(&drop_schema);
            }
        })
        .join();
    }
}
